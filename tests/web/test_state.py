"""The live state: node-level anomalies mark the node's GPUs, filters refuse what is not a label,
and a frame of 10,240 GPUs is integers only."""

from __future__ import annotations

import pytest

from hpcinsight.schemas.events import Anomaly
from hpcinsight.web.state import ClusterState, Filter, FilterError
from hpcinsight.web.synthetic import SyntheticCluster

NOW = 1_780_000_000_000  # any instant: the live state keys anomalies by id, not by when


def test_a_node_anomaly_marks_every_gpu_of_the_node_until_resolved() -> None:
    state = ClusterState()
    SyntheticCluster(state, nodes=3, gpus=4).tick()
    now = NOW
    a = dict(
        id="ib1",
        kind="slow_interconnect",
        severity="warning",
        subject_type="node",
        subject="node-0001",
        ts=now,
        started_at=now,
        window_start=now,
        window_end=now,
        message="IB slow",
        evidence={},
        node="node-0001",
    )
    state.add_anomalies([Anomaly(state="firing", **a)])
    idx, layout = state.layout(Filter(kind="slow_interconnect"))
    assert [g[0] for g in layout["gpus"]] == ["node-0001"] * 4
    frame = state.frame(state.select(Filter()))
    assert frame["kinds"] == ["slow_interconnect"] and frame["anom"] == [0] * 4 + [1] * 4 + [0] * 4
    state.add_anomalies([Anomaly(state="resolved", **a)])
    assert state.select(Filter(kind="slow_interconnect")) == []


def test_a_job_anomaly_marks_the_gpus_its_job_holds() -> None:
    state = ClusterState()
    cluster = SyntheticCluster(state, nodes=32, gpus=2)
    cluster.tick()
    job = cluster.job_of["node-0001"]
    assert job is not None
    held = [i for i in state.select(Filter()) if state.job[i] == job]
    now = NOW
    a = dict(
        id="h1",
        kind="hang",
        severity="critical",
        subject_type="job",
        subject=job,
        ts=now,
        started_at=now,
        window_start=now,
        window_end=now,
        message="hung",
        evidence={},
        job_id=job,
    )
    state.add_anomalies([Anomaly(state="firing", **a)])
    assert sorted(state.select(Filter(kind="hang"))) == sorted(held) and len(held) == 2 * 15  # 15 of each 16 nodes run a job
    order = state.select(Filter())
    frame = state.frame(order)
    assert frame["kinds"] == ["hang"] and sorted(order[p] for p, bits in enumerate(frame["anom"]) if bits) == sorted(held)
    state.add_anomalies([Anomaly(state="resolved", **a)])
    assert state.select(Filter(kind="hang")) == []


@pytest.mark.parametrize("given", [{"team": "a b"}, {"user": "x" * 129}, {"job": "j;1"}, {"kind": "é"}, {"evil": "1"}])
def test_filters_refuse_what_is_not_a_label(given: dict[str, str]) -> None:
    with pytest.raises(FilterError):
        Filter.parse(given)


def test_a_frame_of_10240_gpus_is_compact() -> None:
    state = ClusterState()
    cluster = SyntheticCluster(state, nodes=1280, gpus=8)
    cluster.tick()
    idx = state.select(Filter())
    frame = state.frame(idx)  # its cost is measured by bench/ui.py, not here
    assert frame["n"] == 10240 and all(type(v) is int for m in ("util", "power", "mem", "temp", "p95") for v in frame[m])


def test_the_summary_reads_stranded_gpus_and_fgd_fragmentation_from_the_kpi_stream() -> None:
    from hpcinsight.schemas.events import NodeInventory, SchedulerEvent
    from hpcinsight.streams.kpis import KpiConfig, SchedulingKpis

    state = ClusterState()
    assert state.summary()["fragmentation"]["fgd_gpus"] is None  # no KPI stream yet: the view shows "–"
    kpis = SchedulingKpis(KpiConfig(interval_s=60.0, lateness_s=0.0))
    t0 = NOW // 60_000 * 60_000
    events: list[NodeInventory | SchedulerEvent] = [
        NodeInventory(ts=t0, node=n, gpu_count=8, gpu_model="H100") for n in ("a", "b")
    ]
    for i, (gpus, gid) in enumerate([(1.0, "a/gpu0"), (0.5, "a/gpu1"), (1.0, None), (1.0, None), (1.0, None)]):
        common = {"source": "test", "job_id": f"j{i}", "requested_gpus": gpus}
        events.append(SchedulerEvent(ts=t0 + 1 + i, kind="submitted", **common))
        if gid:
            events.append(SchedulerEvent(ts=t0 + 1 + i, kind="scheduled", node="a", gpu_ids=[gid], **common))
    rows = [r for e in events for r in kpis.observe(e)] + kpis.advance(t0 + 60_000)
    state.add_kpis(rows)
    got = state.summary()["fragmentation"]
    # node a: GPU 0 taken, GPU 1 half taken, six free; node b free. Typical shapes: one whole GPU (4 of 5
    # jobs) and half a GPU (1 of 5). A whole-GPU task cannot use GPU 1's free half: 0.8 * 0.5 GPU.
    assert got["fgd_gpus"] == pytest.approx(0.4) and got["fgd_rate"] == pytest.approx(0.4 / 14.5)
    assert (got["stranded_gpus"], got["free_gpus"]) == (6.0, 14.0)  # the six free GPUs of the partly used node
