"""A short chaos campaign in the suite (``tests/chaos``): the whole pipeline as processes, each
component and the broker killed -9, stopped and restarted at seeded random moments, the store's
disk filled for a while; then nothing lost, nothing stored twice, no anomaly told twice, every
component up. Once on the single broker, once on a three-node KRaft cluster (replication 3,
min.insync.replicas 2). ``make chaos`` runs the long profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Profile, markdown, run

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


@pytest.mark.parametrize("brokers", [1, 3])
def test_short_chaos_campaign_loses_duplicates_and_retells_nothing(brokers: int, tmp_path: Path) -> None:
    result = run(Profile.short(brokers, seed=brokers, seconds=45.0), tmp_path)
    report = markdown([result])
    print(report)
    kinds = {f.kind for f in result.faults}
    assert {"kill", "stop", "restart"} <= kinds, report
    assert any(f.target.startswith("broker-") and f.kind == "kill" for f in result.faults), report
    assert any(f.kind == "disk" for f in result.faults), report
    assert any(f.target.startswith("broker-") and f.kind == "stop" for f in result.faults), report
    assert result.passed, report
