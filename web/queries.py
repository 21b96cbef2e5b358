"""The query library over HTTP: list the queries, run one by name with its parameters.

Parameters are checked against the query's header and bound server-side by ClickHouse, never
spliced into the SQL; a bad one is a 400 naming it, before the store is touched. Each library query
also gets a documented route of its own, its parameters typed in the OpenAPI spec (what a generated
client or the docs page needs); the generic ``/api/queries/{name}`` comes after them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Request

from hpcinsight.web.deps import authorised, json_safe, services

if TYPE_CHECKING:
    from hpcinsight.sinks.query import Param

#: rows a library query may return through the API
MAX_ROWS = 20_000


def openapi_param(p: Param) -> dict[str, Any]:
    """A library query parameter as an OpenAPI query parameter."""
    return {
        "name": p.name,
        "in": "query",
        "required": p.default is None,
        "schema": p.json_schema(),
        "description": f"{p.doc} (ClickHouse {p.type})".strip(),
    }


def queries() -> list[dict[str, Any]]:
    from hpcinsight.sinks.query import library

    return [
        {
            "name": q.name,
            "group": q.group,
            "what": q.doc,
            "params": [{"name": p.name, "type": p.type, "default": p.default, "what": p.doc} for p in q.params],
        }
        for q in library().values()
    ]


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
    rows = services(request).store.run(lambda client: records(client, name, params))
    return {
        "query": name,
        "columns": list(rows[0]) if rows else [],
        "rows": json_safe(rows[:MAX_ROWS]),
        "truncated": len(rows) > MAX_ROWS,
    }


def build_router() -> APIRouter:
    """The routes, one per query of the library as it is now (a function, not a module-level router:
    the library is read when an app is made, not when this module is imported)."""
    from hpcinsight.sinks.query import library

    router = APIRouter(dependencies=[Depends(authorised)])
    router.get("/api/queries", summary="the query library: every query, its parameters")(queries)
    for query in library().values():

        def run_named(request: Request, name: str = query.name) -> dict[str, Any]:
            return run_query(name, request)

        router.get(
            f"/api/queries/{query.name}",
            name=f"query_{query.name}",
            tags=[f"queries: {query.group}"],
            summary=query.doc.split(". ")[0][:120] or query.name,
            description=query.doc,
            openapi_extra={"parameters": [openapi_param(p) for p in query.params]},
        )(run_named)
    router.get(
        "/api/queries/{name}",  # after the named routes: it would match them all
        summary="run a library query by name; its parameters as query parameters, bound server-side by ClickHouse",
    )(run_query)
    return router
