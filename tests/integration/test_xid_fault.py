"""An XID injected into the sim cluster goes agent -> Kafka -> worker -> anomalies -> ClickHouse."""

from __future__ import annotations

import pytest

from tests.conftest import Pipeline, sim_agent, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_injected_xid_raises_a_decoded_gpu_fault(pipeline: Pipeline) -> None:
    worker = pipeline.start("worker", "worker", "--windows", "10s/5s")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        pipeline.run(
            *sim_agent(2, 4, ticks=40, speed=10),
            "--xid",
            "1:2@10:79",
            "--xid",
            "1:2@12:79x2",
            "--xid",
            "0:0@20:13",
        )
        pipeline.wait_caught_up("worker", ["gpu.samples.raw", "gpu.xid"])
        pipeline.wait_caught_up("clickhouse-sink", ["gpu.samples", "gpu.quantiles", "anomalies", "gpu.xid"])
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
        stop(worker)
    xids = pipeline.sql("SELECT node, gpu_index, xid FROM xid_events ORDER BY ts, seq")
    assert [(x["node"], x["gpu_index"], x["xid"]) for x in xids] == [("sim-node-01", 2, 79)] * 3 + [("sim-node-00", 0, 13)]
    faults = pipeline.sql(
        "SELECT node, severity, state, evidence['xid'] AS xid, message FROM anomalies FINAL WHERE kind = 'gpu_xid' ORDER BY xid"
    )
    assert [(f["node"], f["severity"], f["state"], f["xid"]) for f in faults] == [
        ("sim-node-00", "warning", "firing", 13),
        ("sim-node-01", "critical", "firing", 79),
    ]
    assert "fallen off the bus" in faults[1]["message"] and "drain" in faults[1]["message"]
