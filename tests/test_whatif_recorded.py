"""The "as recorded" replay agrees with the live pipeline's scheduling KPIs on the same events.

The whole openb trace goes through the trace replay (agents/scheduler/trace.py) into scheduler
events and node inventory; the stream's :class:`SchedulingKpis` and whatif's store adapter plus
:func:`as_recorded` read the same records. With one KPI interval covering the whole replay, the
queue-wait quantiles (cluster and by GPU request) and the GPU-hours must be the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcinsight.agents.scheduler.trace import POD_FILE, OpenbTraceCollector, TraceConfig
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent
from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis
from hpcinsight.whatif.recorded import as_recorded
from hpcinsight.whatif.store import jobs_from_events, nodes_from_inventory

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-openb-2023"
pytestmark = pytest.mark.skipif(not (DATA / POD_FILE).is_file(), reason=f"the openb trace is not at {DATA}")

INTERVAL_S = 1_000_000.0  # longer than the replay (12.9 M trace s / 60 = 215 k s): one interval
T0 = 1_764_000_000_000 // int(INTERVAL_S * 1000) * int(INTERVAL_S * 1000)  # a boundary


def test_as_recorded_matches_the_stream_kpis() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, start_ms=T0, speedup=60.0))
    records = collector.sample(T0) + collector.sample(T0 + 10**12)
    kpis = SchedulingKpis(KpiConfig(interval_s=INTERVAL_S, lateness_s=10.0))
    rows = [row for rec in records for row in kpis.observe(rec)]
    rows += kpis.advance(T0 + 2 * int(INTERVAL_S * 1000) + 10**7)
    closing = [r for r in rows if r.ts == T0 + int(INTERVAL_S * 1000)]
    stream = {(r.kpi, r.dimension, r.group): r for r in closing}

    events = [r for r in records if isinstance(r, SchedulerEvent)]
    inventory = [r for r in records if isinstance(r, NodeInventory)]
    nodes = nodes_from_inventory(inventory)
    assert len(nodes) == 1213 and sum(n.gpus for n in nodes) == 6212
    rep, _ = as_recorded(nodes, jobs_from_events(events))

    assert rep["gpu_hours"] == pytest.approx(stream[("gpu_hours", "cluster", "all")].value, abs=0.1)
    ours_cluster = rep["wait_by"]["cluster"]["all"]
    assert ours_cluster["count"] == stream[("queue_wait_p50_s", "cluster", "all")].count
    assert ours_cluster["p50"] == pytest.approx(stream[("queue_wait_p50_s", "cluster", "all")].value, abs=1e-3)
    assert ours_cluster["p95"] == pytest.approx(stream[("queue_wait_p95_s", "cluster", "all")].value, abs=1e-3)
    compared = 0
    for bucket, q in rep["wait_by"]["gpu_bucket"].items():
        s50 = stream.get(("queue_wait_p50_s", "gpu_bucket", bucket))
        if s50 is None:
            continue
        compared += 1
        assert q["count"] == s50.count, bucket
        assert q["p50"] == pytest.approx(s50.value, abs=1e-3), bucket
        assert q["p95"] == pytest.approx(stream[("queue_wait_p95_s", "gpu_bucket", bucket)].value, abs=1e-3), bucket
    assert compared >= 3
