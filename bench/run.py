"""hpcinsight benchmarks: each figure printed with its ratio to a baseline measured in the same run.

Run with ``make bench`` (or ``.venv/bin/python -m bench.run``). These machines are shared and
noisy, so every benchmark takes the best of several repeats and compares against a baseline
doing the bare minimum of the same work, measured right next to it:

* ``codec``: decoding + validating GPU sample messages with the catalog's codec, against
  ``json.loads`` of the same bytes (parsing without any validation or typing).
* ``sink``: the sink's path from raw message bytes to rows in ClickHouse (block decode straight
  to Arrow with the codec's validation, ``insert_arrow`` into the catalog table, one insert in
  the background) against ``insert_arrow`` of the same batches as ready-made Arrow tables
  (``bench/sink.py``).
* ``steps``: per-step cost of the training-step client against an empty ``with`` block.
* ``agent``: the real agent process at 1 Hz (8 GPUs + 8 IB ports): CPU share of one core
  and peak RSS, against a bare producer sending the same messages.

The ratio is always baseline / ours for times and costs, ours / baseline for rates: above 1
means we beat the baseline.

Speed targets of later issues (agent tick cost, stream throughput, end-to-end latency, query
latency) join this suite.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
from hpcinsight.schemas.catalog import GPU_SAMPLES_RAW

T0 = (int(time.time()) - 3600) * 1000
T = TypeVar("T")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def traced_peak(fn: Callable[[], T]) -> tuple[int, T]:
    """The peak of Python's allocations (tracemalloc) while ``fn`` runs, above what was held when it
    began, and what it returned: for memory figures, which the machine's load does not move."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        got = fn()
        return tracemalloc.get_traced_memory()[1] - before, got
    finally:
        tracemalloc.stop()


def messages(nodes: int, ticks: int) -> list[bytes]:
    sim = SimGpuCollector(SimConfig(nodes=nodes, gpus_per_node=8))
    out = []
    for k in range(ticks):
        samples = sim.sample(T0 + k * 1000)
        for n in range(nodes):
            out.append(GPU_SAMPLES_RAW.codec.encode(samples[n * 8 : (n + 1) * 8]))
    return out


def bench_codec(repeats: int) -> dict[str, float]:
    data = messages(nodes=128, ticks=40)  # 5,120 messages, 40,960 samples
    samples = len(data) * 8
    ours = best_of(lambda: [GPU_SAMPLES_RAW.codec.decode(m) for m in data], repeats)
    base = best_of(lambda: [json.loads(m) for m in data], repeats)
    return {"samples_per_s": samples / ours, "baseline_samples_per_s": samples / base, "ratio": base / ours}  # rate ratio


def _sink(repeats: int) -> dict[str, float]:
    from bench.sink import bench_sink

    return bench_sink(repeats)


def _steps(repeats: int) -> dict[str, float]:
    from bench.steps import bench_steps

    return bench_steps(repeats)


def _agent(repeats: int) -> dict[str, float]:
    from bench.agent_resources import bench_agent_resources

    return bench_agent_resources()


def _gpu_tick(repeats: int) -> dict[str, float]:
    from bench.agent_tick import bench_gpu_tick

    return bench_gpu_tick(repeats)


def _sketch(repeats: int) -> dict[str, float]:
    from bench.sketch import bench_sketch

    return bench_sketch(repeats)


def _windows(repeats: int) -> dict[str, float]:
    from bench.sketch import bench_windows

    return bench_windows(repeats)


def _stream(name: str) -> Callable[[int], dict[str, float]]:
    def run(repeats: int) -> dict[str, float]:
        from bench import stream

        return getattr(stream, f"bench_{name}")(repeats)

    return run


BENCHMARKS: dict[str, Callable[[int], dict[str, float]]] = {
    "codec": bench_codec,
    "sink": _sink,
    "steps": _steps,
    "gpu_tick": _gpu_tick,
    "sketch": _sketch,
    "agent": _agent,
    "stream_chain": _stream("stream_chain"),
    "stream_worker": _stream("stream_worker"),
    "latency_1k": _stream("latency_1k"),
    "latency_10k": _stream("latency_10k"),
    "windows": _windows,
    "storage": lambda repeats: __import__("bench.storage", fromlist=["bench_storage"]).bench_storage(repeats),
    "query": lambda repeats: __import__("bench.query", fromlist=["bench_query"]).bench_query(repeats),
    "ui": lambda repeats: __import__("bench.ui", fromlist=["bench_ui"]).bench_ui(repeats),
    "alerts": lambda repeats: __import__("bench.alerts", fromlist=["bench_alerts"]).bench_alerts(repeats),
    "scaleout": _stream("scaleout"),
    "whatif": lambda repeats: __import__("bench.whatif", fromlist=["bench_whatif"]).bench_whatif(repeats),
    "faust_floor": lambda repeats: __import__("bench.faust_floor", fromlist=["bench_faust_floor"]).bench_faust_floor(repeats),
    "redrive": lambda repeats: __import__("bench.redrive", fromlist=["bench_redrive"]).bench_redrive(repeats),
    "restore": lambda repeats: __import__("bench.restore", fromlist=["bench_restore"]).bench_restore(repeats),
}
# the figure each benchmark reports first, and its unit (the ratio is always baseline-relative)
HEADLINE = {
    "codec": ("samples_per_s", "samples/s"),
    "sink": ("rows_per_s", "rows/s"),
    "steps": ("us_per_step", "us/step"),
    "agent": ("cpu_pct_of_core", "% of a core"),
    "gpu_tick": ("ms_per_tick", "ms/tick"),
    "sketch": ("sketch_bytes", "bytes"),
    "stream_chain": ("samples_per_s", "samples/s"),
    "stream_worker": ("samples_per_s", "samples/s"),
    "latency_1k": ("p99_s", "s p99"),
    "latency_10k": ("p99_s", "s p99"),
    "windows": ("sketch_bytes", "bytes (1h)"),
    "storage": ("bytes_per_sample", "bytes/sample"),
    "query": ("p95_s", "s p95 (worst query)"),
    "ui": ("ms_per_update_p95", "ms/update p95"),
    "alerts": ("anomalies_per_s", "anomalies/s"),
    "scaleout": ("samples_per_s", "samples/s (2 workers)"),
    "whatif": ("fgd_one_seed_s", "s (FGD, one seed)"),
    "faust_floor": ("samples_per_s", "samples/s (today's messages)"),
    "redrive": ("bytes_per_letter", "bytes/letter"),
    "restore": ("mb_held", "MB held"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), help=f"subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results file to merge into (default bench/results.json, which feeds the table in docs/benchmarks.md)",
    )
    parser.add_argument(
        "--no-table",
        "--no-readme",
        dest="no_table",
        action="store_true",
        help="do not regenerate the results table in docs/benchmarks.md",
    )
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    import os

    from rich.progress import track

    from bench import report

    results_path = args.results or report.RESULTS
    print(f"machine: {report.machine()}")
    for name in track(args.names, description="benchmarks"):
        load = os.getloadavg()[0]
        r = BENCHMARKS[name](args.repeats)
        key, unit = HEADLINE[name]
        extra = "  ".join(f"{k}={v:,.3g}" for k, v in r.items() if k not in (key, "baseline_" + key, "ratio"))
        print(
            f"{name:8s} {r[key]:>14,.3f} {unit:12s} baseline {r['baseline_' + key]:>14,.3f}   ratio {r['ratio']:.2f}   "
            f"{extra}   (load {load:.1f} at start)",
            flush=True,
        )
        report.record(name, r, HEADLINE[name], load, results_path)  # each as it completes: a long suite keeps what it measured
    if not args.no_table and results_path == report.RESULTS:
        report.update_page()


if __name__ == "__main__":
    main()
