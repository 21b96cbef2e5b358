# The two commands of hpcinsight (see README):
#   make demo   set up, then run a simulated cluster through the whole real pipeline
#   make test   set up, then run the test suite against a broker the tests start themselves
# Set-up is idempotent: a virtual environment in .venv with every extra and the test tools at the
# exact versions of constraints.txt (pyproject.toml holds ranges), and the Apache Kafka jars
# resolved from Maven Central into ~/.cache/hpcinsight.

PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed
ARGS   ?=
# Test processes: the integration tests spend most of their time waiting on real time (agents
# sampling at 1 Hz, windows closing, a broker stopped on purpose), so three share 2 cores well
# (measured here: 6.6 min against 13-16 min one at a time). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 3

.PHONY: setup constraints demo lint test bench clean browser replay-genai tools image image-base chaos chaos-short chaos-store chaos-sink fuzz

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[all,test]'
	$(VENV)/bin/python -m hpcinsight.deploy.local.kafka fetch >/dev/null
	touch $(STAMP)

setup: $(STAMP) browser tools image-base

# constraints.txt anew from the set-up's environment, after a dependency was added to pyproject.toml
# (set-up installs it at the newest version its range allows) or a version moved: its header stays.
constraints: $(STAMP)
	{ grep '^#' constraints.txt; $(VENV)/bin/pip freeze --exclude hpcinsight | grep -v -e '^#' -e '^-e ' \
	  | sed -E 's|^([A-Za-z0-9_.-]+) @ file://.*/[A-Za-z0-9_.]+-([0-9][^-]*)-.*|\1==\2|' | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && touch -r $(STAMP) constraints.txt

# Helm and Alertmanager, built once from the Go module proxy into ~/.cache/hpcinsight/tools for the
# chart's and the Alertmanager receiver's tests (deploy/tools/go.py). Without Go it says so: those
# tests then fail in CI and skip elsewhere, with the reason.
tools: $(STAMP)
	@$(VENV)/bin/python -m hpcinsight.deploy.tools.go build >/dev/null \
	  || echo "setup: a Go tool could not be built (see above); the tests that need it fail in CI and skip elsewhere"

# The OCI image of every component (deploy/image/build.sh: podman; the base layer from Debian
# packages unless BASE=<image> names one). Prints the image's tag and size.
image: $(STAMP)
	HOST_PYTHON=$(VENV)/bin/python deploy/image/build.sh

# podman, runc and debootstrap (Debian's) for the image and its test, and the image's base layer
# built once from Debian packages into ~/.cache/hpcinsight/image. As root or with sudo; otherwise
# said plainly, and the image test fails in CI and skips elsewhere with that reason.
image-base: $(STAMP)
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "setup: podman, runc and debootstrap are missing and installing them needs root or sudo"; exit 0; fi; \
	  echo "setup: installing Debian's podman, runc and debootstrap for the image"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq podman runc debootstrap >/dev/null \
	    || { echo "setup: apt-get install podman runc debootstrap failed"; exit 0; }; \
	fi; \
	HOST_PYTHON=$(VENV)/bin/python deploy/image/build.sh --base-only >/dev/null \
	  || echo "setup: the image's base layer could not be built (see above)"

# Debian's chromium, for the unit view's browser tests and benchmark (Playwright drives it through
# executable_path; no browser is ever downloaded). Installed as root or with sudo; otherwise said
# plainly, and those tests skip with that reason.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	else echo "setup: $(CHROMIUM) is missing and installing it needs root or sudo (apt-get install chromium);" \
	     "the browser tests will be skipped"; exit 0; fi; \
	echo "setup: installing Debian's chromium for the browser tests"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "setup: apt-get install chromium failed; the browser tests will be skipped"

demo: setup
	$(VENV)/bin/hpcinsight demo $(ARGS)

# The gates, first: ruff's lint and format check (ruff.toml) and mypy, strict on the ground, the
# schemas and the plugin interfaces (.ci/typecheck). `ruff format . && ruff check --fix .` mends most.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python .ci/typecheck

test: setup lint
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

clean:
	rm -rf $(VENV) .hpcinsight

bench: setup
	$(VENV)/bin/python -m bench.run $(ARGS)

# Chaos campaigns (tests/chaos, docs/guarantees.md): the pipeline as processes, components and
# brokers killed -9, stopped and restarted at random, the store's disk filled; then checked.
# chaos: CHAOS_MINUTES of faults on one broker, then on a three-node KRaft cluster; writes the
# result tables into docs/chaos-results.md (between its chaos:latest markers; the rest is kept).
# chaos-short: the suite's profile, one broker.
# chaos-store: the embedded store alone, its writer killed and its disk filled (tests/chaos/store.py).
# chaos-sink: the sink alone on a real broker, killed -9 again and again while it inserts (tests/chaos/sink.py).
CHAOS_MINUTES ?= 30
CHAOS_SEED ?= 0
chaos: setup
	$(VENV)/bin/python -m tests.chaos --minutes $(CHAOS_MINUTES) --brokers 1 --brokers 3 --seed $(CHAOS_SEED) \
		--report docs/chaos-results.md $(ARGS)

chaos-short: setup
	$(VENV)/bin/python -m tests.chaos --short --brokers 1 --seed $(CHAOS_SEED) $(ARGS)

chaos-store: setup
	$(VENV)/bin/python -m tests.chaos.store --minutes $(or $(STORE_CHAOS_MINUTES),10) --seed $(CHAOS_SEED) $(ARGS)

chaos-sink: setup
	$(VENV)/bin/python -m tests.chaos.sink --kills $(or $(SINK_CHAOS_KILLS),30) --seed $(CHAOS_SEED) $(ARGS)

# Property-based fuzzing of every decoder and consumer (tests/fuzz): the suite runs 60 examples a
# property; this runs FUZZ_EXAMPLES (default 5,000) each.
FUZZ_EXAMPLES ?= 5000
fuzz: setup
	HYPOTHESIS_PROFILE=long FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest tests/fuzz -n 0 $(ARGS)

# The real GPU utilisation of the Alibaba GenAI trace (143 serving pods, a sample a minute for a day)
# through the pipeline: per-pod quantiles and under-use flags (docs/evaluation.md: Replay your own data).
GENAI ?= ../shared/data/alibaba-genai-2026/pod_gpu_duty_cycle_anon.tar.gz
replay-genai: setup
	tar -xzOf $(GENAI) | awk -F, 'NR == 1 { print "gpu,ts,util"; next } { print $$3 "," $$2 "," $$1 }' \
		| $(VENV)/bin/hpcinsight replay gpu-util - --job-per-gpu $(ARGS)
