"""The worker's ``--loglevel`` holds for the root logger (streams.app.new_worker).

Faust's terminal spinner turns the root logger to DEBUG for as long as the worker runs, so every
debug call of aiokafka, Faust and mode on the hot path built a record that no handler printed.
Both tests call mode's ``_setup_logging``, what its worker runs first on start, and put the
logging state back after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from hpcinsight.streams.app import new_worker


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    level, handlers = logger.level, list(logger.handlers)
    try:
        yield logger
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


def _started(worker: faust.Worker) -> None:
    worker.redirect_stdouts = False  # mode would swap sys.stdout for the rest of the test session
    worker._setup_logging()


def test_the_worker_leaves_the_root_logger_at_its_level(root: logging.Logger) -> None:
    app = faust.App("loglevel-ours", broker="kafka://127.0.0.1:1", value_serializer="raw")
    _started(new_worker(app, "WARNING"))
    assert root.level == logging.WARNING and not root.isEnabledFor(logging.DEBUG)
    assert [type(h).__name__ for h in root.handlers if h.level == logging.DEBUG] == []


def test_faust_alone_would_log_everything_at_debug(root: logging.Logger) -> None:
    # the premise of new_worker: should Faust stop doing this, this test says so
    app = faust.App("loglevel-plain", broker="kafka://127.0.0.1:1", value_serializer="raw")
    _started(faust.Worker(app, loglevel="WARNING", quiet=True))
    assert root.level == logging.DEBUG
