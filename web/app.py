"""The Insight API: REST with an OpenAPI spec, one Server-Sent Events stream per view, the unit view.

Read-only throughout: live state comes from the topics (:mod:`hpcinsight.web.feed`), history from
the query library (parameters bound server-side by ClickHouse, never spliced), job findings from
``diagnose``. When a token is configured (``HPCINSIGHT_API_TOKEN`` or ``HPCINSIGHT_API_TOKEN_FILE``)
every ``/api`` route needs ``Authorization: Bearer TOKEN``, compared in constant time; the token is
never logged or echoed. The page itself, the OpenAPI spec and its docs pages (``/docs``, ``/redoc``,
their scripts bundled, no CDN) hold no data and are public.

The routes live in one router per concern: :mod:`.pages` (the unit view), :mod:`.health`,
:mod:`.live` (the live state), :mod:`.jobs` (a job, with ``diagnose``), :mod:`.queries` (the query
library) and :mod:`.stream` (the live feed); :mod:`.deps` holds what they share. This module
only puts them together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from hpcinsight.core.settings import Secret
from hpcinsight.web import health, jobs, live, pages, queries, stream
from hpcinsight.web.deps import Services, Store
from hpcinsight.web.state import ClusterState

DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files, served with the docs pages


def create_app(
    state: ClusterState,
    token: Secret | None = None,
    store_connect: Callable[[], Any] | None = None,
    feed_status: Callable[[], dict[str, Any]] | None = None,
    job_threshold: Callable[[str | None, str | None], float] | None = None,
    frame_interval_s: float = 1.0,
) -> FastAPI:
    """The app over ``state`` (and the store ``store_connect`` opens, if any); ``app.state.traffic``
    holds its request counts for /metrics."""
    # The docs pages (/docs, /redoc) load Swagger UI and ReDoc from the service itself, not from a
    # CDN: GPU clusters are often air-gapped, and FastAPI's defaults would show a blank page there.
    app = FastAPIOffline(
        title="hpcinsight Insight API",
        version="1",
        static_url=DOCS_ASSETS,
        description="Live cluster state from the topics and the query library's results; read-only. "
        "Send `Authorization: Bearer TOKEN` when the service has a token.",
    )
    traffic = health.ServeStats()
    app.state.traffic = traffic
    app.state.services = Services(
        state,
        Store(store_connect),
        traffic,
        feed_status,
        job_threshold,
        frame_interval_s,
        token.reveal().encode() if token is not None else None,
    )
    app.middleware("http")(health.counting(traffic))

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    for router in (pages.router, health.router, live.router, jobs.router, queries.build_router(), stream.router):
        app.include_router(router)
    return app
