"""A worker built by create_app has done its one-off loading before it joins the group."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hpcinsight.schemas.catalog import ensure_topics


@pytest.mark.kafka
def test_a_new_worker_has_loaded_what_its_first_outputs_need(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The first conversion of Python values to Arrow loads pandas (0.3-0.5 s here with pyarrow):
    a worker built by create_app has done it, so its first batch after a start does not wait for
    it. In a process of its own: the test process has loaded both long ago."""
    prefix = f"warm{uuid.uuid4().hex[:6]}."
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, prefix)
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "HPCINSIGHT_TOPIC_PREFIX": prefix, "HPCINSIGHT_DATA_DIR": str(tmp_path)}
    code = (
        "import sys\n"
        "from hpcinsight.core.settings import load\n"
        "from hpcinsight.streams.app import WorkerOptions, create_app\n"
        "assert 'pandas' not in sys.modules, 'loaded before the worker was built'\n"
        f"create_app(load({env!r}), WorkerOptions())\n"
        "print('pandas' in sys.modules, 'pyarrow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]
