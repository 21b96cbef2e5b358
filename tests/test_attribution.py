"""The attribution table: which job holds a GPU at a given event time."""

from __future__ import annotations

from hpcinsight.schemas.events import GpuSample, IbSample, NodeInventory, SchedulerEvent, StepMetric
from hpcinsight.streams.attribution import Attribution, expand_hostlist

T0 = 1_750_000_000_000


def ev(kind: str, job: str, ts: int, **kw: object) -> SchedulerEvent:
    return SchedulerEvent(ts=T0 + ts, source="test", job_id=job, kind=kind, **kw)


def sample(node: str, index: int, ts: int, job: str | None = None) -> GpuSample:
    return GpuSample(node, index, f"GPU-{node}-{index}", T0 + ts, gpu_util=50.0, job_id=job)


def test_hostlist() -> None:
    assert expand_hostlist("gpu[01-03,07],login5") == ["gpu01", "gpu02", "gpu03", "gpu07", "login5"]
    assert expand_hostlist("n1") == ["n1"]
    assert expand_hostlist("a[8-10]") == ["a8", "a9", "a10"]


def test_gpu_placement_is_looked_up_by_event_time() -> None:
    a = Attribution()
    a.observe(NodeInventory(T0, "n0", 8, gpu_model="H100", zone="eu-1"))
    a.observe(ev("submitted", "j1", 0, user="alice", team="nlp", priority="high"))
    a.observe(ev("scheduled", "j1", 10_000, node="n0", gpu_ids=["0", "1"]))
    a.observe(ev("finished", "j1", 60_000))
    a.observe(ev("submitted", "j2", 50_000, user="bob", team="vision"))
    a.observe(ev("scheduled", "j2", 61_000, node="n0", gpu_ids=["n0/gpu1"]))
    assert a.enrich_gpu(sample("n0", 0, 5_000)).job_id is None  # before j1 started
    s = a.enrich_gpu(sample("n0", 1, 59_999))  # processed after j1 finished, stamped before
    assert (s.job_id, s.user, s.team, s.priority, s.zone) == ("j1", "alice", "nlp", "high", "eu-1")
    assert a.enrich_gpu(sample("n0", 1, 61_500)).job_id == "j2"
    assert a.enrich_gpu(sample("n0", 0, 61_500)).job_id is None  # j1 released GPU 0
    assert a.enrich_gpu(sample("n0", 2, 20_000)).job_id is None  # never placed there


def test_node_level_placement_and_agent_job_ids() -> None:
    a = Attribution()
    a.observe(ev("submitted", "123", 0, user="carol", team="hpc"))
    a.observe(ev("started", "123", 1_000, node="gpu[01-02]"))
    s = a.enrich_gpu(sample("gpu02", 5, 2_000))
    assert (s.job_id, s.user) == ("123", "carol")
    ib = a.enrich_ib(IbSample("gpu01", "mlx5_0", 1, T0 + 2_000))
    assert (ib.job_id, ib.team) == ("123", "hpc")
    # nothing placed on n9: the agent's own job id stays, and gets its user if the job is known
    assert a.enrich_gpu(sample("n9", 0, 2_000, job="123")).user == "carol"
    assert a.enrich_gpu(sample("n9", 0, 2_000, job="other")).job_id == "other"


def test_ib_goes_to_the_job_with_most_gpus_on_the_node_and_duplicates_are_harmless() -> None:
    a = Attribution()
    for _ in range(2):  # at-least-once delivery: the same events twice
        a.observe(ev("scheduled", "big", 0, node="n0", gpu_ids=["0", "1", "2"]))
        a.observe(ev("scheduled", "small", 0, node="n0", gpu_ids=["3"]))
    assert a.enrich_ib(IbSample("n0", "mlx5_0", 1, T0 + 1)).job_id == "big"
    a.observe(ev("finished", "big", 100))
    assert a.enrich_ib(IbSample("n0", "mlx5_0", 1, T0 + 200)).job_id == "small"
    assert a.forget_ended(T0 + 1_000) == 1 and a.job("big") is None


def test_steps_get_their_jobs_user_and_team() -> None:
    a = Attribution()
    a.observe(ev("submitted", "j1", 0, user="alice", team="nlp"))
    step = StepMetric("j1", 3, 8, 100, T0 + 1_000, 0.5)
    assert (a.enrich_step(step).user, a.enrich_step(step).team) == ("alice", "nlp")
    other = StepMetric("j2", 0, 8, 100, T0 + 1_000, 0.5)
    assert a.enrich_step(other) is other  # unknown job: unchanged


def test_a_gpu_placed_by_id_wins_over_its_nodes_placement() -> None:
    """Whole-node and per-GPU placements side by side: a GPU placed by id goes to that job while
    it holds it, the node's other GPUs (and every GPU of a node placed whole) to the node's job."""
    a = Attribution()
    a.observe(ev("started", "whole", 0, node="n[0-1]"))
    a.observe(ev("started", "slice", 1_000, node="n1", gpu_ids=["GPU-n1-3"]))
    assert a.enrich_gpu(sample("n1", 3, 2_000)).job_id == "slice"
    assert a.enrich_gpu(sample("n1", 3, 500)).job_id == "whole"  # before the slice was placed
    assert a.enrich_gpu(sample("n1", 2, 2_000)).job_id == "whole"
    assert a.enrich_gpu(sample("n0", 3, 2_000)).job_id == "whole"
    a.observe(ev("finished", "slice", 3_000))
    assert a.enrich_gpu(sample("n1", 3, 3_500)).job_id == "whole"
