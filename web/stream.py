"""The live feed: one Server-Sent Events stream per view of the unit page.

A ``layout`` event names the view's GPUs (sent again only when they change), then a ``frame`` every
frame interval carries per metric an array of integers in layout order: small frames for thousands
of GPUs a second. The state is read off the event loop; a client that leaves ends its stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from hpcinsight.web.deps import LABEL, Services, authorised, services
from hpcinsight.web.state import METRICS, Filter, FilterError

router = APIRouter(dependencies=[Depends(authorised)])


@router.get(
    "/api/stream",
    summary="Server-Sent Events: `layout` (the GPUs of the view, when they change) then a `frame` a second "
    "(per metric an array of integers in layout order)",
)
async def stream(
    request: Request,
    view: str = Query("operator", pattern="^(operator|user)$"),
    team: str | None = Query(None, pattern=LABEL),
    user: str | None = Query(None, pattern=LABEL),
    job: str | None = Query(None, pattern=LABEL),
    model: str | None = Query(None, pattern=LABEL),
    kind: str | None = Query(None, pattern=LABEL),
    zone: str | None = Query(None, pattern=LABEL),
    metrics: str = Query(",".join(METRICS), max_length=64),
    svc: Services = Depends(services),
) -> StreamingResponse:
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
    state, traffic, interval_s = svc.state, svc.traffic, svc.frame_interval_s

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
            await asyncio.sleep(max(0.05, interval_s - (time.perf_counter() - started)))

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
