"""The benchmark suite's results file and the table in docs/benchmarks.md generated from it."""

from __future__ import annotations

from pathlib import Path

from bench import report
from bench.run import BENCHMARKS, HEADLINE


def test_every_benchmark_is_described_and_has_a_headline() -> None:
    assert set(report.DESCRIPTIONS) == set(BENCHMARKS) == set(HEADLINE)


def test_record_merges_and_the_table_says_what_the_file_says(tmp_path: Path) -> None:
    results, page = tmp_path / "results.json", tmp_path / "benchmarks.md"
    page.write_text(f"# x\n\n{report.START}\nstale\n{report.END}\n\nafter\n")
    report.record(
        "codec",
        {"samples_per_s": 190_000.0, "baseline_samples_per_s": 170_000.0, "ratio": 1.12, "x": 3.0},
        HEADLINE["codec"],
        1.5,
        results,
    )
    report.record("query", {"p95_s": 0.27, "baseline_p95_s": 0.07, "ratio": 0.26}, HEADLINE["query"], 4.0, results)
    report.record(
        "codec", {"samples_per_s": 200_000.0, "baseline_samples_per_s": 170_000.0, "ratio": 1.18}, HEADLINE["codec"], 2.0, results
    )  # a rerun replaces its own entry only
    report.update_page(results, page)
    text = page.read_text()
    assert "stale" not in text and text.endswith("\n\nafter\n")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    assert "200,000 samples/s" in rows["`codec`"] and "1.18" in rows["`codec`"] and "load 2.0" in rows["`codec`"]
    assert "0.27 s p95" in rows["`query`"] and "p95 <= 1 s" in rows["`query`"]
    assert "not measured yet" in rows["`sink`"]


def test_the_benchmarks_page_has_the_markers() -> None:
    assert report.PAGE == Path(report.ROOT) / "docs" / "benchmarks.md"
    text = report.PAGE.read_text()
    assert report.START in text and report.END in text


def test_the_sink_bench_feeds_the_messages_of_the_worker_s_batch() -> None:
    """bench/sink.py models what the worker writes to gpu.samples; its batch is the worker's."""
    from bench import sink
    from hpcinsight.agents.sim.gpu import SimConfig, SimGpuCollector
    from hpcinsight.schemas.catalog import GPU_SAMPLES
    from hpcinsight.streams.app import WorkerOptions

    assert sink.WORKER_BATCH == WorkerOptions().batch_max
    sim = SimGpuCollector(SimConfig(nodes=sink.NODES, gpus_per_node=sink.GPUS))
    ticks = [sim.sample(1_700_000_000_000 + k * 1000) for k in range(4)]
    feed = sink.worker_output(ticks, 100, GPU_SAMPLES.codec.encode)
    rows = [len(GPU_SAMPLES.codec.decode(v)) for v in feed.values]
    assert sum(rows) == 4 * sink.NODES * sink.GPUS and max(rows) <= 17 * sink.GPUS  # 100 raw messages over 6 partitions
    assert sorted(set(feed.partitions)) == list(range(sink.PARTITIONS))
