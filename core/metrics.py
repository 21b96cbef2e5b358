"""One Prometheus ``/metrics`` endpoint per long-running component.

Components describe their own series (a ``metric_families()`` that yields prometheus-client
metric families from the counters they keep); this module only serves them, so every
component is scraped the same way: ``--metrics-port`` (0: off) and ``--metrics-host``
(127.0.0.1 by default; 0.0.0.0 in a pod, where the ServiceMonitor scrapes it).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

Families = Callable[[], Iterable[Any]]


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--metrics-port", type=int, default=0, help=f"serve Prometheus /metrics of the {what} on this port (0: off)"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1; 0.0.0.0 in a pod)")


class MetricsServer:
    """Serves the families of ``sources`` (called at each scrape) until :meth:`close`."""

    def __init__(self, host: str, port: int, *sources: Families) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        class _Collector:
            def collect(self) -> Iterable[Any]:
                for source in sources:
                    try:
                        yield from source()
                    except Exception:
                        log.exception("collecting metrics failed")

        self.registry = CollectorRegistry()
        self.registry.register(_Collector())
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        self.server.shutdown()


# -- families from the counters a component keeps --------------------------------------------
# Every component's ``metric_families()`` had the same loops: flat counters from (name, value,
# help) rows, one family with a series per table / stage / detector, a gauge or two. Written once.


def counters(series: Iterable[tuple[str, float, str]]) -> Iterator[Any]:
    """A counter family for each ``(name, value, help)`` (prometheus-client adds ``_total``)."""
    from prometheus_client.core import CounterMetricFamily

    for name, value, doc in series:
        yield CounterMetricFamily(name, doc, value=value)


def labelled(name: str, doc: str, label: str, values: Mapping[str, float], gauge: bool = False) -> Any:
    """One family (a counter, or a gauge) with a series for each ``label`` value, in sorted order."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    family = (GaugeMetricFamily if gauge else CounterMetricFamily)(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def gauge(name: str, doc: str, value: float) -> Any:
    """A gauge family of one value."""
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, value=value)


def lag_family(group: str, lag: dict[tuple[str, int], int]) -> Any:
    """``hpcinsight_consumer_lag{group,topic,partition}``: the one lag series of every consumer."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(
        "hpcinsight_consumer_lag", "messages not yet consumed, per partition", labels=["group", "topic", "partition"]
    )
    for (topic, partition), n in sorted(lag.items()):
        family.add_metric([group, topic, str(partition)], n)
    return family


def lag_source(group: str, lag: Callable[[], dict[tuple[str, int], int]]) -> Families:
    return lambda: [lag_family(group, lag())]


def serve(args: argparse.Namespace, *sources: Families) -> MetricsServer | None:
    """A server for ``sources`` if the command was given a metrics port."""
    port = getattr(args, "metrics_port", 0) or 0
    if not port:
        return None
    if not 0 < port < 65536:
        raise ValueError(f"--metrics-port {port}: not a TCP port")
    return MetricsServer(args.metrics_host, port, *sources)
