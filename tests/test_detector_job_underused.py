"""Under-used job: fires after warm-up and a sustained low since-start p95; per-team/user thresholds."""

from __future__ import annotations

from hpcinsight.schemas.events import Anomaly, JobQuantiles, SchedulerEvent
from hpcinsight.streams.detectors.job_underused import JobUnderusedConfig, JobUnderusedDetector

T0 = 1_750_000_000_000
MIN = 60_000


def q(minute: int, p95: float, job: str = "j1", team: str | None = "nlp", user: str | None = "alice") -> JobQuantiles:
    return JobQuantiles(
        job,
        "gpu_util",
        "since_start",
        T0,
        T0 + minute * MIN,
        16,
        16 * 60 * minute,
        p95 / 4,
        p95 / 2,
        p95,
        p95 / 2,
        user=user,
        team=team,
    )


def run(detector: JobUnderusedDetector, p95s: list[float], **kw: object) -> list[Anomaly]:
    out: list[Anomaly] = []
    for minute, p in enumerate(p95s, start=1):
        out += detector.observe(q(minute, p, **kw))
    return out


def test_fires_after_warmup_and_duration_then_resolves() -> None:
    d = JobUnderusedDetector(JobUnderusedConfig(warmup_s=300, for_s=300))
    out = run(d, [5.0] * 12 + [45.0])
    assert [(a.state, (a.ts - T0) // MIN) for a in out] == [("firing", 10), ("resolved", 13)]
    assert out[0].id == out[1].id and out[0].subject == "j1" and out[0].started_at == T0 + 5 * MIN
    assert out[0].evidence["threshold_pct"] == 30.0 and out[0].evidence["gpus"] == 16.0


def test_busy_or_young_jobs_raise_nothing() -> None:
    d = JobUnderusedDetector(JobUnderusedConfig(warmup_s=600, for_s=300))
    assert run(d, [95.0, 5.0, 97.0] * 10) == []  # noisy but busy
    d = JobUnderusedDetector(JobUnderusedConfig(warmup_s=600, for_s=300))
    assert run(d, [1.0] * 14) == []  # idle but not long enough after warm-up (fires at minute 15)


def test_thresholds_per_team_and_user() -> None:
    cfg = JobUnderusedConfig(warmup_s=0, for_s=0, overrides={"team:inference": 10.0, "user:bob": 80.0})
    assert cfg.threshold("inference", "alice") == 10.0 and cfg.threshold("inference", "bob") == 80.0
    assert run(JobUnderusedDetector(cfg), [20.0] * 3, team="inference") == []
    assert len(run(JobUnderusedDetector(cfg), [20.0] * 3, team="nlp")) == 1
    assert len(run(JobUnderusedDetector(cfg), [60.0] * 3, user="bob")) == 1


def test_job_end_resolves_and_restore_prevents_refiring() -> None:
    d = JobUnderusedDetector(JobUnderusedConfig(warmup_s=0, for_s=60))
    fired = run(d, [5.0] * 3)
    assert [a.state for a in fired] == ["firing"]
    end = d.observe(SchedulerEvent(T0 + 4 * MIN, "k8s", "j1", "finished"))
    assert [(a.state, a.id) for a in end] == [("resolved", fired[0].id)]
    again = JobUnderusedDetector(JobUnderusedConfig(warmup_s=0, for_s=60))
    again.restore(fired)
    assert run(again, [5.0] * 5) == []
    assert [a.state for a in run(again, [50.0])] == ["resolved"]
