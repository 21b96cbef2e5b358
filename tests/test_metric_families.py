"""The family helpers of hpcinsight.core.metrics, as a Prometheus scrape reads them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from hpcinsight.core import metrics


def _scrape(families: Iterable[Any]) -> list[str]:
    class _Collector:
        def collect(self) -> Iterable[Any]:
            return list(families)

    registry = CollectorRegistry()
    registry.register(_Collector())
    return [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("# HELP")]


def test_counters_labelled_and_gauges_read_as_before() -> None:
    lines = _scrape(
        [
            *metrics.counters([("x_rows", 3, "rows"), ("x_batches", 0, "batches")]),
            metrics.labelled("x_messages", "per stage", "stage", {"job": 2, "gpu": 5}),
            metrics.labelled("x_open", "per detector", "detector", {"hang": 1}, gauge=True),
            metrics.labelled("x_none", "nothing yet", "table", {}),
            metrics.gauge("x_pending", "pending", 7.5),
        ]
    )
    assert lines == [
        "# TYPE x_rows_total counter",
        "x_rows_total 3.0",
        "# TYPE x_batches_total counter",
        "x_batches_total 0.0",
        "# TYPE x_messages_total counter",
        'x_messages_total{stage="gpu"} 5.0',
        'x_messages_total{stage="job"} 2.0',
        "# TYPE x_open gauge",
        'x_open{detector="hang"} 1.0',
        "# TYPE x_none_total counter",
        "# TYPE x_pending gauge",
        "x_pending 7.5",
    ]


def test_the_agent_and_the_worker_use_them() -> None:
    """agents.runner and streams.app describe their series with these helpers (no loop of their own)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in ("agents/runner.py", "streams/app.py"):
        text = (root / path).read_text()
        assert "MetricFamily(" not in text, path
        assert "metrics.counters(" in text, path
