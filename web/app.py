"""The Insight API: REST with an OpenAPI spec, one Server-Sent Events stream per view, the unit view.

Read-only throughout: live state comes from the topics (:mod:`hpcinsight.web.feed`), history from
the query library (parameters bound server-side by ClickHouse, never spliced), job findings from
``diagnose``. When a token is configured (``HPCINSIGHT_API_TOKEN`` or ``HPCINSIGHT_API_TOKEN_FILE``)
every ``/api`` route needs ``Authorization: Bearer TOKEN``, compared in constant time; the token is
never logged or echoed. The page itself, the OpenAPI spec and its docs pages (``/docs``, ``/redoc``,
their scripts bundled, no CDN) hold no data and are public.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline

from hpcinsight.core.settings import Secret
from hpcinsight.web.state import METRICS, ClusterState, Filter, FilterError

if TYPE_CHECKING:
    from hpcinsight.sinks.query import Param

log = logging.getLogger("hpcinsight.web")
STATIC = Path(__file__).resolve().parent / "static"
LABEL = r"^[\w.:@/+=-]{1,128}$"
#: rows a library query may return through the API
MAX_ROWS = 20_000


def _openapi_param(p: Param) -> dict[str, Any]:
    """A library query parameter as an OpenAPI query parameter."""
    return {"name": p.name, "in": "query", "required": p.default is None, "schema": p.json_schema(),
            "description": f"{p.doc} (ClickHouse {p.type})".strip()}


class Store:
    """One read-only client of the store, opened on first use and reopened after a failure;
    calls are serialised (the embedded client is not shared between threads)."""

    def __init__(self, connect: Callable[[], Any] | None) -> None:
        self.connect, self.client, self.lock = connect, None, threading.Lock()

    def run(self, fn: Callable[[Any], Any]) -> Any:
        if self.connect is None:
            raise HTTPException(503, "no store is configured for this service")
        with self.lock:
            try:
                if self.client is None:
                    self.client = self.connect()
                return fn(self.client)
            except ValueError:
                raise
            except Exception as err:
                if self.client is not None:
                    try:
                        self.client.close()
                    except Exception:
                        pass
                self.client = None
                log.warning("store: %s", type(err).__name__)
                why = str(err) if isinstance(err, ConnectionError) else type(err).__name__  # never a URL with credentials
                raise HTTPException(503, f"the store did not answer ({why})") from None


def _json_safe(value: Any) -> Any:
    from hpcinsight.sinks.query import plain_value

    value = plain_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files, served with the docs pages


@dataclass
class ServeStats:
    """What the service counts for its /metrics: requests by (method, route, status), live clients."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    clients: int = 0

    def metric_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        family = CounterMetricFamily("hpcinsight_serve_requests", "HTTP requests, by route template and status",
                                     labels=["method", "route", "status"])
        for (method, route, status), n in sorted(self.requests.items()):
            family.add_metric([method, route, str(status)], n)
        yield family
        yield GaugeMetricFamily("hpcinsight_serve_live_clients", "clients following the live feed (SSE)", value=self.clients)


def create_app(state: ClusterState, token: Secret | None = None, store_connect: Callable[[], Any] | None = None,
               feed_status: Callable[[], dict[str, Any]] | None = None, job_threshold: Callable[[str | None, str | None], float] | None = None,
               frame_interval_s: float = 1.0) -> FastAPI:
    # The docs pages (/docs, /redoc) load Swagger UI and ReDoc from the service itself, not from a
    # CDN: GPU clusters are often air-gapped, and FastAPI's defaults would show a blank page there.
    app = FastAPIOffline(title="hpcinsight Insight API", version="1", static_url=DOCS_ASSETS,
                         description="Live cluster state from the topics and the query library's results; read-only. "
                                     "Send `Authorization: Bearer TOKEN` when the service has a token.")
    store = Store(store_connect)
    expected = token.reveal().encode() if token is not None else None

    def authorised(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]
    traffic = ServeStats()
    app.state.traffic = traffic

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Any:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template (/api/jobs/{job}), never the raw URL
        key = (request.method, path, response.status_code)
        traffic.requests[key] = traffic.requests.get(key, 0) + 1
        return response

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    # -- the page -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:
            raise HTTPException(404, "no such file")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="liveness (no data)")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    # -- live state -----------------------------------------------------------------------
    @app.get("/api/cluster", dependencies=auth, summary="cluster status: GPUs, allocation, utilisation, open anomalies, cluster KPIs")
    def cluster() -> dict[str, Any]:
        out = state.summary()
        if feed_status is not None:
            out["feed"] = feed_status()
        return out

    @app.get("/api/gpus", dependencies=auth, summary="every GPU's current values, filtered")
    def gpus(team: str | None = Query(None, pattern=LABEL), user: str | None = Query(None, pattern=LABEL),
             job: str | None = Query(None, pattern=LABEL), model: str | None = Query(None, pattern=LABEL),
             kind: str | None = Query(None, pattern=LABEL), node: str | None = Query(None, pattern=LABEL),
             zone: str | None = Query(None, pattern=LABEL)) -> list[dict[str, Any]]:
        f = Filter(team=team, user=user, job=job, model=model, kind=kind, node=node, zone=zone)
        idx = state.select(f)
        with state.lock:
            return [state.gpu_row(i) for i in idx]

    @app.get("/api/nodes/{node}", dependencies=auth, summary="a node: inventory, its GPUs now, open anomalies")
    def node_detail(node: str) -> dict[str, Any]:
        return _known(state.node_view(node), "node")

    @app.get("/api/gpus/{uuid}", dependencies=auth, summary="a GPU: current values, latest quantiles, open anomalies")
    def gpu_detail(uuid: str) -> dict[str, Any]:
        return _known(state.gpu_view(uuid), "GPU")

    @app.get("/api/anomalies", dependencies=auth, summary="open anomalies (fired, not resolved)")
    def anomalies(kind: str | None = Query(None, pattern=LABEL)) -> list[dict[str, Any]]:
        return state.anomalies_view(kind)

    @app.get("/api/kpis", dependencies=auth, summary="latest scheduling KPIs (allocation rate, fragmentation, queue, usage)")
    def kpis(kpi: str | None = Query(None, pattern=LABEL), dimension: str | None = Query(None, pattern=LABEL)) -> list[dict[str, Any]]:
        return state.kpis_view(kpi, dimension)

    @app.get("/api/jobs/{job}", dependencies=auth,
             summary="a job: GPUs, quantiles since start with its threshold, open anomalies (live); heat strip, "
                     "step time per rank, timeline and diagnose findings (store)")
    def job_detail(job: str, store_data: bool = Query(True, alias="store")) -> dict[str, Any]:
        if not _matches(job):
            raise HTTPException(400, "job: not a job id (1-128 letters, digits or ._:@/+=-)")
        live = state.job_view(job) or {"job": job, "gpus": [], "quantiles": [], "open_anomalies": []}
        user = next((g["user"] for g in live["gpus"] if g["user"]), None)
        team = next((g["team"] for g in live["gpus"] if g["team"]), None)
        live["threshold_pct"] = job_threshold(team, user) if job_threshold else None
        if store_data:
            try:
                live["store"] = store.run(lambda client: _job_from_store(client, job))
            except HTTPException as err:
                live["store_error"] = err.detail
            except ValueError as err:
                live["store_error"] = str(err)
        if not live["gpus"] and not live["quantiles"] and not live.get("store"):
            raise HTTPException(404, f"nothing is known about this job{': ' + live['store_error'] if live.get('store_error') else ''}")
        return _json_safe(live)

    # -- the query library ----------------------------------------------------------------
    @app.get("/api/queries", dependencies=auth, summary="the query library: every query, its parameters")
    def queries() -> list[dict[str, Any]]:
        from hpcinsight.sinks.query import library

        return [{"name": q.name, "group": q.group, "what": q.doc,
                 "params": [{"name": p.name, "type": p.type, "default": p.default, "what": p.doc} for p in q.params]}
                for q in library().values()]

    def run_query(name: str, request: Request) -> dict[str, Any]:
        from hpcinsight.sinks.query import library, records

        found = library().get(name)
        if found is None:
            raise HTTPException(404, "no such query in the library (GET /api/queries lists them)")
        params = dict(request.query_params)
        if len(request.query_params.multi_items()) != len(params):
            raise HTTPException(400, "each parameter may be given once")
        if any(len(v) > 1024 for v in params.values()):
            raise HTTPException(400, "a parameter value is longer than 1024 characters")
        found.bind(params)  # ValueError -> 400 naming the parameter, before touching the store
        rows = store.run(lambda client: records(client, name, params))
        return {"query": name, "columns": list(rows[0]) if rows else [], "rows": _json_safe(rows[:MAX_ROWS]),
                "truncated": len(rows) > MAX_ROWS}

    # One documented route per library query, its parameters typed in the OpenAPI spec (what a
    # generated client or the docs page needs), then the generic route for any other name.
    from hpcinsight.sinks.query import library

    for query in library().values():
        def run_named(request: Request, name: str = query.name) -> dict[str, Any]:
            return run_query(name, request)

        app.get(f"/api/queries/{query.name}", dependencies=auth, name=f"query_{query.name}", tags=[f"queries: {query.group}"],
                summary=query.doc.split(". ")[0][:120] or query.name, description=query.doc,
                openapi_extra={"parameters": [_openapi_param(p) for p in query.params]})(run_named)

    app.get("/api/queries/{name}", dependencies=auth,  # after the named routes: it would match them all
            summary="run a library query by name; its parameters as query parameters, bound server-side by ClickHouse")(run_query)

    # -- live feed ------------------------------------------------------------------------
    @app.get("/api/stream", dependencies=auth,
             summary="Server-Sent Events: `layout` (the GPUs of the view, when they change) then a `frame` a second "
                     "(per metric an array of integers in layout order)")
    async def stream(request: Request, view: str = Query("operator", pattern="^(operator|user)$"),
                     team: str | None = Query(None, pattern=LABEL), user: str | None = Query(None, pattern=LABEL),
                     job: str | None = Query(None, pattern=LABEL), model: str | None = Query(None, pattern=LABEL),
                     kind: str | None = Query(None, pattern=LABEL), zone: str | None = Query(None, pattern=LABEL),
                     metrics: str = Query(",".join(METRICS), max_length=64)) -> StreamingResponse:
        chosen = tuple(m for m in metrics.split(",") if m)
        bad = [m for m in chosen if m not in METRICS]
        if bad or not chosen:
            raise HTTPException(400, f"metrics: choose from {', '.join(METRICS)}")
        if view == "user" and not user:
            raise HTTPException(400, "the user view needs user=NAME")
        try:
            f = Filter.parse({"team": team, "user": user, "job": job, "model": model, "kind": kind, "zone": zone})
        except FilterError as err:
            raise HTTPException(400, str(err)) from None

        async def events() -> Any:
            traffic.clients += 1
            try:
                async for chunk in frames():
                    yield chunk
            finally:
                traffic.clients -= 1

        async def frames() -> Any:
            versions, idx, sent_idx = None, [], None
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                started = time.perf_counter()
                if state.versions() != versions:
                    versions = state.versions()
                    idx, layout = await asyncio.to_thread(state.layout, f)
                    if idx != sent_idx:
                        sent_idx = idx
                        layout["view"] = view
                        yield f"event: layout\ndata: {json.dumps(layout, separators=(',', ':'))}\n\n"
                frame = await asyncio.to_thread(state.frame, idx, chosen)
                yield f"event: frame\ndata: {json.dumps(frame, separators=(',', ':'))}\n\n"
                await asyncio.sleep(max(0.05, frame_interval_s - (time.perf_counter() - started)))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _known(found: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if found is None:
        raise HTTPException(404, f"no such {what} in the live state")
    return found


def _matches(value: str) -> bool:
    import re

    return re.fullmatch(LABEL, value) is not None


def _job_from_store(client: Any, job: str) -> dict[str, Any]:
    """The job's history from the query library, and diagnose's findings."""
    from dataclasses import asdict

    from hpcinsight.sinks.diagnose import build_report
    from hpcinsight.sinks.query import records

    out: dict[str, Any] = {
        "heat_strip": records(client, "job_gpu_timeline", {"job": job}),
        "ranks": records(client, "straggler_timeline", {"job": job}),
    }
    try:
        report = build_report(client, job)
    except ValueError as err:
        out["diagnose_error"] = str(err)
        return out
    out.update(summary=report.summary, findings=[asdict(f) for f in report.findings], timeline=report.timeline,
               bucket_s=report.bucket_s)
    return out
