"""`hpcinsight demo --webhook URL` posts a grouped alert for the injected fault and its resolution."""

from __future__ import annotations

import pytest

from tests.alerts_receiver import LocalReceiver
from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_the_demo_posts_the_fault_firing_then_resolved(pipeline: Pipeline) -> None:
    receiver = LocalReceiver()
    try:
        result = pipeline.run(
            "demo",
            "--duration",
            "60",
            "--speed",
            "2",  # the idle spell (36 s of sim time) 18 s of wall time: the lag of a loaded machine seldom spans it
            "--windows",
            "10s/5s",
            "--nodes",
            "2",
            "--gpus",
            "4",
            "--webhook",
            receiver.url("/demo/Demo7Token"),
            timeout=300,
        )
    finally:
        receiver.stop()
    bodies = receiver.bodies()
    # on failure: what was posted, in order, and the demo's own account (its anomalies table, logs)
    story = "\n".join(
        f"{b['status']}: " + ", ".join(f"{a['labels'].get('kind')}/{a['status']}" for a in b["alerts"]) for b in bodies
    )
    story += "\n--- demo output ---\n" + result.stdout[-6000:]
    # what goes wrong on the idle GPU's node (its under-use, and any detector that joins it) is grouped
    # under one key; every alert is told firing, then resolved, once each
    assert bodies and {b["groupKey"] for b in bodies} == {bodies[0]["groupKey"]}, story
    assert bodies[0]["groupLabels"]["node"] == "sim-node-01" and bodies[-1]["status"] == "resolved", story
    told: dict[str, list[str]] = {}
    for b in bodies:
        for a in b["alerts"]:
            if a["status"] == "resolved" or not told.get(a["fingerprint"]):
                told.setdefault(a["fingerprint"], []).append(a["status"])
    # each is told once firing, then once resolved; one whose firing and resolution reached the router
    # together (the pipeline lagging under load delivers both at once) is told once, as resolved
    assert all(states in (["firing", "resolved"], ["resolved"]) for states in told.values()), story
    assert ["firing", "resolved"] in told.values(), story
    alert = next(a for b in bodies for a in b["alerts"] if a["labels"]["kind"] == "gpu_underused")
    assert alert["labels"]["user"] == "alice" and alert["labels"]["team"] == "llm" and alert["labels"]["subject_type"] == "gpu"
    assert "GPU 3 of sim-node-01 is idle" in alert["annotations"]["summary"] and alert["labels"]["gpu"] == "3"
    assert alert["annotations"]["diagnose"] == f"hpcinsight diagnose {alert['labels']['job']}"
    assert len({b["notificationId"] for b in bodies}) == len(bodies)
    out = result.stdout
    assert f"Alerts posted to http://127.0.0.1:{receiver.port}/..." in out, out
    assert "[FIRING:" in out and "[RESOLVED:" in out and f"{len(bodies)} notification(s) posted, 0 not" in out
    assert "Demo7Token" not in out + result.stderr + pipeline.log("alerts")
