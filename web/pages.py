"""The unit view's page and its static files: no data, so public (the page asks for a token itself).

Only files that ship in ``static/`` are served, by name; nothing is cached by the browser, so an
upgraded service is seen at once.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = STATIC / name
    if name not in {p.name for p in STATIC.iterdir()}:
        raise HTTPException(404, "no such file")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})
