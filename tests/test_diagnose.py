"""``hpcinsight diagnose`` on the known story of :mod:`tests.query_scenario` (embedded chDB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcinsight.sinks.diagnose import build_report, parse_since, render_text, write_plots
from tests import query_scenario as scenario

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client, sc = scenario.open_store(tmp_path_factory.mktemp("dg") / "ch")
    yield client, sc
    client.close()


def test_the_report_ranks_each_injected_fault_with_its_next_step(store) -> None:
    client, _ = store
    report = build_report(client, "job-a")
    found = [(f.severity, f.subject_type, f.subject) for f in report.findings]
    xid_gpu, slow_gpu = "{}/gpu{}".format(*scenario.XID_GPU), "{}/gpu{}".format(*scenario.SLOW)
    assert found == [
        ("critical", "gpu", xid_gpu),
        ("warning", "node", "node-01"),
        ("warning", "gpu", slow_gpu),
        ("warning", "rank", f"rank {scenario.STRAGGLER_RANK}"),
    ]
    xid, ib, slow, straggler = report.findings
    assert "XID 79" in xid.what and xid.next_step.startswith("drain node node-00")
    assert "InfiniBand link of node node-01" in ib.next_step and "vs peers'" in ib.evidence[0]
    assert "utilisation" in slow.evidence[1] and "gpu_outlier" in slow.evidence[-1]
    # rank 3's GPU (node-00/gpu3) is healthy, though another GPU of its node raised an XID
    assert "data loader" in straggler.next_step and "35 % slower" in straggler.evidence[0]
    text = render_text(report)
    assert text.splitlines()[4] == f"Suspect: GPU {xid_gpu}: XID 79"
    assert "gpu_util ~ power_w" in text and "ib_bytes_per_s ~ step_s" in text
    timeline = text[text.index("\nTimeline\n") :]
    assert timeline.index("submitted") < timeline.index("straggler firing") < timeline.index("gpu_xid firing")


def test_an_idle_job_is_told_to_right_size(store) -> None:
    client, _ = store
    report = build_report(client, "job-b")
    assert [f.subject_type for f in report.findings] == ["job"]
    assert report.findings[0].next_step.startswith("right-size the request")


def test_json_and_plots(store, tmp_path, monkeypatch) -> None:
    client, _ = store
    report = build_report(client, "job-a")
    paths = write_plots(client, report, tmp_path / "plots")
    assert [p.name for p in paths] == ["job-a_gpu_utilisation.png", "job-a_step_time.png", "job-a_ib_throughput.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    loaded = json.loads(report.to_json())
    assert loaded["summary"]["gpus"] == 16 and loaded["findings"][0]["severity"] == "critical"


def test_the_cli_runs_it_and_refuses_an_unknown_job(tmp_path) -> None:
    """The command in a process of its own on a store filled by another (an embedded store is
    opened by one process at a time)."""
    store_dir = tmp_path / "ch"
    fill = (
        "import sys; from pathlib import Path; from tests import query_scenario as s; s.open_store(Path(sys.argv[1]))[0].close()"
    )
    subprocess.run([sys.executable, "-c", fill, str(store_dir)], check=True, cwd=ROOT, timeout=300)
    env = {**os.environ, "CLICKHOUSE_URL": f"chdb://{store_dir}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcinsight.cli", *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
        )

    result = cli("diagnose", "job-a", "--format", "json", "--since", "10m", "--plots", str(tmp_path))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert len(got["plots"]) == 3 and got["findings"]
    assert cli("diagnose", "no-such-job").returncode == 2


def test_since() -> None:
    assert [parse_since(s) for s in (None, "", "90", "90s", "15m", "2h", "1d")] == [0, 0, 90, 90, 900, 7200, 86400]
    with pytest.raises(ValueError, match="duration"):
        parse_since("1 week")
