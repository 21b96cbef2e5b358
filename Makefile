# The two commands of hpcinsight (see README):
#   make demo   set up, then run a simulated cluster through the whole real pipeline
#   make test   set up, then run the test suite against a broker the tests start themselves
# Set-up is idempotent: a virtual environment in .venv with the pinned packages, and the
# Apache Kafka jars resolved from Maven Central into ~/.cache/hpcinsight.

PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/python -m deploy.local.kafka fetch >/dev/null
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/hpcinsight demo $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .hpcinsight

bench: setup
	$(VENV)/bin/python -m bench.run $(ARGS)
