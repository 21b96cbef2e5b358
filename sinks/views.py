"""The query library's parameterized views: SQL that several query files share, written once.

Every job-scoped query starts from the job's window (its span from the per-job rollup, cut to
``since_s``, and the default bucket), and several read the job's GPUs per bucket from the raw
samples or the per-minute rollup. Those two pieces live in ``sinks/queries/views/*.sql``, files of
the library's form (header, ``{name:Type}`` placeholders) in the group ``view``, and the store holds
them as ClickHouse parameterized views. So a query file says ``FROM job_window(job = {job:String},
...)`` and still runs unchanged from ``clickhouse-client``; the definition exists once.

:mod:`hpcinsight.sinks.migrations` creates the views (migration 6) and, after every migration,
replaces a view whose definition differs from this build's file: each view carries the hash of
its SQL in its comment, so a changed file reaches existing stores without a new migration, and an
unchanged one costs one read of ``system.tables``. :func:`inline_views` writes a query's view calls
out as subqueries, for SQL that must be rewritten as text (the Grafana dashboards).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any

from hpcinsight.sinks.query import LIBRARY_DIR, PLACEHOLDER, NamedQuery, QueryFileError, parse_query_file
from hpcinsight.sinks.storage import Layout, quote

VIEWS_DIR = LIBRARY_DIR / "views"
#: the start of a view's comment in the store; the rest is the hash of its SQL
COMMENT_PREFIX = "hpcinsight library view sha256:"


@cache
def views(directory: Path = VIEWS_DIR) -> dict[str, NamedQuery]:
    """Every view of the library, by name."""
    return {q.name: q for q in (parse_query_file(p, groups=("view",)) for p in sorted(directory.glob("*.sql")))}


def comment(view: NamedQuery) -> str:
    return COMMENT_PREFIX + hashlib.sha256(view.sql.encode()).hexdigest()[:16]


def view_ddl(layout: Layout, view: NamedQuery) -> str:
    """``CREATE OR REPLACE VIEW`` of one view, on the cluster when there is one. The view reads the
    plain table names, which are the Distributed tables on a cluster, like the query files do."""
    return f"CREATE OR REPLACE VIEW {quote(view.name)}{layout.on_cluster} AS\n{view.sql}\nCOMMENT '{comment(view)}'"


def views_ddl(layout: Layout) -> list[str]:
    return [view_ddl(layout, v) for v in views().values()]


def reconcile_views(client: Any, layout: Layout) -> list[str]:
    """Replace every view that is missing or differs from this build's file; returns their names."""
    rows = client.query(
        "SELECT name, comment FROM system.tables WHERE database = currentDatabase() AND name IN {names:Array(String)}",
        parameters={"names": list(views())},
    ).result_rows
    have = {str(name): str(text) for name, text in rows}
    replaced = []
    for name, view in views().items():
        if have.get(name) != comment(view):
            client.command(view_ddl(layout, view))
            replaced.append(name)
    return replaced


# -- inlining ----------------------------------------------------------------------------
def _closing(sql: str, opening: int) -> int:
    """The index of the parenthesis that closes the one at ``opening`` (quotes respected)."""
    depth, quote_char, i = 0, "", opening
    while i < len(sql):
        ch = sql[i]
        if quote_char:
            if ch == "\\":
                i += 1
            elif ch == quote_char:
                quote_char = ""
        elif ch in "'`\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise QueryFileError(f"no closing parenthesis for {sql[opening : opening + 60]!r}")


def _arguments(text: str) -> dict[str, str]:
    """``name = expression, ...`` split at the commas outside parentheses and braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    args = {}
    for part in parts:
        name, sep, expr = part.partition("=")
        if not sep or not name.strip().isidentifier():
            raise QueryFileError(f"a view argument must be NAME = EXPRESSION, got {part.strip()!r}")
        args[name.strip()] = expr.strip()
    return args


def inline_views(sql: str) -> str:
    """``sql`` with each call of a library view, ``name(param = expr, ...)``, replaced by the view's
    SQL as a subquery, each ``{param:Type}`` of it by ``(expr)``: the same query, without the views."""
    known = views()
    if not known:
        return sql
    call = re.compile(rf"\b({'|'.join(map(re.escape, known))})\s*\(")
    out, pos = [], 0
    while (found := call.search(sql, pos)) is not None:
        line_start = sql.rfind("\n", 0, found.start()) + 1
        if "--" in sql[line_start : found.start()]:  # a mention in a comment
            out.append(sql[pos : found.end()])
            pos = found.end()
            continue
        view = known[found.group(1)]
        close = _closing(sql, found.end() - 1)
        args = _arguments(sql[found.end() : close])
        wanted = {p.name for p in view.params}
        if set(args) != wanted:
            raise QueryFileError(f"{view.name} takes {', '.join(sorted(wanted))}; the call gives {', '.join(sorted(args))}")
        body = PLACEHOLDER.sub(lambda m, given=args: f"({given[m.group(1)]})", view.sql)
        out.append(sql[pos : found.start()] + "(\n" + inline_views(body) + "\n)")
        pos = close + 1
    out.append(sql[pos:])
    return "".join(out)
