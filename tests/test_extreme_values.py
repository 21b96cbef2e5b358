"""The largest numbers the schemas accept go through the worker into outputs every consumer reads.

Found 2026-12-07: with the byte rates unbounded, a sample of two schema-valid rates of 1e308 made
its GPU's window mean infinite; JSON writes infinity as null, and the job stage refused the whole
message of sketches it was in (every GPU of the job, for that window). Now every plain number stops
at REAL_LIMIT (a scheduler's GPU and CPU counts at AMOUNT_LIMIT, as the KPIs sum them over every
job), so no sum over them overflows, and a number past it is one dead letter at the edge.
"""

from __future__ import annotations

from hpcinsight.schemas.catalog import DEAD_LETTERS, GPU_SAMPLES_RAW, GPU_SKETCHES, NODE_INVENTORY, SCHEDULER_EVENTS
from hpcinsight.schemas.columns import AMOUNT_LIMIT, REAL_LIMIT
from hpcinsight.schemas.events import GpuSample, NodeInventory, SchedulerEvent
from hpcinsight.streams.processor import Output, SampleProcessor

T0 = 1_764_000_000_000  # an hour's start in the past: the worker refuses only samples from the future
RATES = ("pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s", "nvlink_tx_bytes_per_s", "nvlink_rx_bytes_per_s")


def _run(rate_at: dict[int, float], ticks: int = 200) -> list[Output]:
    """A node of two GPUs of one job at 1 Hz, every byte rate at ``rate_at[tick]`` (else 1e9)."""
    processor = SampleProcessor()
    out: list[Output] = []
    for k in range(ticks):
        rate = rate_at.get(k, 1e9)
        samples = [
            GpuSample("n0", g, f"GPU-{g}", T0 + k * 1000, gpu_util=50.0, job_id="j1", **dict.fromkeys(RATES, rate))
            for g in range(2)
        ]
        out += processor.handle("gpu.samples.raw", 0, k, b"n0", GPU_SAMPLES_RAW.codec.encode(samples))
    return out


def test_the_largest_rates_accepted_give_outputs_every_consumer_reads() -> None:
    out = _run(dict.fromkeys(range(200), REAL_LIMIT))
    sketches = [record for o in out if o.topic is GPU_SKETCHES for record in o.topic.codec.decode(o.value)]
    assert sketches, "no window closed"
    for o in out:
        o.topic.codec.decode(o.value)  # each message, as its consumer decodes it
    means = [s.means["pcie_bytes_per_s"] for s in sketches if s.means]
    assert means and all(m == 2 * REAL_LIMIT for m in means)  # tx + rx, exact
    assert not [o for o in out if o.topic is DEAD_LETTERS]


def test_a_rate_past_the_limit_is_one_dead_letter_and_the_windows_go_on() -> None:
    out = _run({3: REAL_LIMIT * 10})
    letters = [record for o in out if o.topic is DEAD_LETTERS for record in o.topic.codec.decode(o.value)]
    assert [(letter.stage, letter.source_offset) for letter in letters] == [("validate", 3)]
    assert "pcie_tx_bytes_per_s" in letters[0].reason
    for o in out:
        o.topic.codec.decode(o.value)
    assert [o for o in out if o.topic is GPU_SKETCHES]


def test_the_largest_scheduler_counts_give_kpi_rows_every_consumer_reads() -> None:
    """A thousand jobs each asking for the most GPUs and CPUs a scheduler event may state, on
    nodes of the most CPUs an inventory may state: the KPI rows (sums over every job) decode."""
    processor = SampleProcessor()
    nodes = [NodeInventory(T0, f"n{i}", 8, cpus=AMOUNT_LIMIT) for i in range(4)]
    out = processor.observe_scheduler(NODE_INVENTORY.codec.encode(nodes), NODE_INVENTORY)
    jobs = [
        SchedulerEvent(
            T0 + 1000 + k,
            "k8s",
            f"job-{k}",
            "started",
            requested_gpus=AMOUNT_LIMIT,
            requested_cpus=AMOUNT_LIMIT,
            node=f"n{k % 4}",
        )
        for k in range(1000)
    ]
    out += processor.observe_scheduler(SCHEDULER_EVENTS.codec.encode(jobs), SCHEDULER_EVENTS)
    out += processor.advance_kpis(T0 + 3_600_000)
    rows = [record for o in out for record in o.topic.codec.decode(o.value)]
    allocated = [r.value for r in rows if r.kpi == "allocated_gpus" and r.dimension == "cluster"]
    assert allocated and max(allocated) == 1000 * AMOUNT_LIMIT
