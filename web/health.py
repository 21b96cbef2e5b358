"""Liveness and the service's own counts: ``/healthz`` and what ``hpcinsight serve`` exports on /metrics.

Requests are counted by route template (``/api/jobs/{job}``), never by raw URL, so the metric's
labels stay few and a URL's contents never reach the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@dataclass
class ServeStats:
    """What the service counts for its /metrics: requests by (method, route, status), live clients."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    clients: int = 0

    def metric_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        family = CounterMetricFamily(
            "hpcinsight_serve_requests", "HTTP requests, by route template and status", labels=["method", "route", "status"]
        )
        for (method, route, status), n in sorted(self.requests.items()):
            family.add_metric([method, route, str(status)], n)
        yield family
        yield GaugeMetricFamily("hpcinsight_serve_live_clients", "clients following the live feed (SSE)", value=self.clients)


def counting(traffic: ServeStats) -> Callable[[Request, Callable[[Request], Any]], Any]:
    """An HTTP middleware that counts each response in ``traffic``."""

    async def count(request: Request, call_next: Callable[[Request], Any]) -> Any:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template (/api/jobs/{job}), never the raw URL
        key = (request.method, path, response.status_code)
        traffic.requests[key] = traffic.requests.get(key, 0) + 1
        return response

    return count


@router.get("/healthz", summary="liveness (no data)")
def healthz() -> dict[str, Any]:
    return {"ok": True}
