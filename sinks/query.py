"""``hpcinsight query``: the query library and ad-hoc SQL, read-only, parameters bound by ClickHouse.

The library is the plain SQL files in ``sinks/queries/`` (the store's schema lives with the
sink), one query a file, each opening with a header of ``--`` comments::

    -- name: job_summary
    -- group: monitoring
    -- what: one job at a glance: ...
    -- param: job String                the job id
    -- param: since_s UInt32 = 86400    look back this many seconds

The body uses ClickHouse ``{name:Type}`` placeholders, so a file runs unchanged in
``clickhouse-client --param_job=... --queries-file job_summary.sql``. Here values given with
``--param k=v`` are checked against the header (unknown names are refused, numbers must parse
and fit their type) and sent as typed parameters, never formatted into the SQL text: a hostile
value is an error or a literal, never SQL. Everything runs with ``readonly=1``.

SQL that several files share is a parameterized view in ``queries/views/`` (the job's window,
the job's GPUs per bucket; :mod:`hpcinsight.sinks.views`), created in the store by
``hpcinsight db migrate``, so the files call it and still run as they are.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hpcinsight.core.settings import Settings
from hpcinsight.sinks.sql_guard import NotReadingError, reading_statement

#: where the library lives: package data of ``sinks``, beside the schema it reads
LIBRARY_DIR = Path(__file__).resolve().parent / "queries"
GROUPS = ("monitoring", "diagnostics", "scheduling", "store")

_HEADER = re.compile(r"--\s*(?P<key>name|group|what|param):\s*(?P<value>.*?)\s*$")
_PARAM = re.compile(
    r"(?P<name>[A-Za-z_]\w*)\s+(?P<type>[A-Za-z]\w*(?:\([^)]*\))?)"
    r"(?:\s*=\s*(?P<default>'[^']*'|\S+))?(?:\s+(?P<doc>\S.*))?"
)
#: ``{name:Type}`` placeholders of the SQL body
PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_]\w*)\s*:\s*([^{}]+?)\s*\}")
_INT_RANGES = {
    f"{s}Int{b}": ((0, 2**b - 1) if s else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)) for s in ("", "U") for b in (8, 16, 32, 64)
}


class QueryFileError(ValueError):
    """A library file whose header is missing or does not match its body."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None  # None: required
    doc: str = ""

    @property
    def base_type(self) -> str:
        """The ClickHouse type without ``Nullable(...)``."""
        return self.type.removeprefix("Nullable(").removesuffix(")") if self.type.startswith("Nullable(") else self.type

    def convert(self, raw: str, query: str) -> Any:
        """The typed value of ``raw``: numbers parsed and range-checked here, so a wrong value is a
        clear error naming the parameter; strings pass as they are (bound, never spliced)."""
        base = self.base_type
        try:
            if base in _INT_RANGES:
                value = int(raw.strip(), 10)
                lo, hi = _INT_RANGES[base]
                if not lo <= value <= hi:
                    raise ValueError(f"out of range {lo}..{hi}")
                return value
            if base in ("Float32", "Float64"):
                number = float(raw)
                if not math.isfinite(number):
                    raise ValueError("not a finite number")
                return number
        except ValueError as err:
            raise ValueError(f"query {query!r}: --param {self.name}={raw!r} is not a {self.type} ({err})") from None
        return raw

    def describe(self) -> str:
        return f"{self.name}={'?' if self.default is None else self.default}"

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of its values, as :meth:`convert` checks them (for an OpenAPI spec)."""
        base = self.base_type
        schema: dict[str, Any]
        if base in _INT_RANGES:
            lo, hi = _INT_RANGES[base]
            schema = {"type": "integer", "minimum": lo, "maximum": hi}
        elif base in ("Float32", "Float64"):
            schema = {"type": "number"}
        else:
            schema = {"type": "string", "maxLength": 1024}
        if self.default is not None:
            schema["default"] = self.convert(self.default, "")  # typed as the schema says: 300, not "300"
        return schema


@dataclass(frozen=True)
class NamedQuery:
    name: str
    group: str
    doc: str
    sql: str
    params: tuple[Param, ...]
    path: Path

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def bind(self, given: dict[str, str]) -> dict[str, Any]:
        """Typed values of every parameter: the given ones checked, the others from their defaults."""
        unknown = sorted(set(given) - {p.name for p in self.params})
        if unknown:
            takes = ", ".join(p.name for p in self.params) or "no parameters"
            raise ValueError(f"query {self.name!r} takes {takes}; unknown: {', '.join(unknown)}")
        values = {}
        for p in self.params:
            raw = given.get(p.name, p.default)
            if raw is None:
                raise ValueError(f"query {self.name!r} needs --param {p.name}=... ({p.type}{': ' + p.doc if p.doc else ''})")
            values[p.name] = p.convert(raw, self.name)
        return values


def parse_query_file(path: Path, groups: tuple[str, ...] = GROUPS) -> NamedQuery:
    """One library file: its header and body, checked against each other. (The library's views,
    :mod:`hpcinsight.sinks.views`, are files of the same form in the group ``view``.)"""
    text = path.read_text()
    header: dict[str, str] = {}
    params: list[Param] = []
    lines = text.splitlines()
    body_start = len(lines)
    for i, line in enumerate(lines):
        if not line.startswith("--"):
            body_start = i
            break
        m = _HEADER.fullmatch(line)
        if m is None:
            continue  # free comment lines in the header
        if m["key"] == "param":
            p = _PARAM.fullmatch(m["value"])
            if p is None:
                raise QueryFileError(f"{path.name}: cannot read {line!r}; expected '-- param: NAME Type [= DEFAULT] [what]'")
            default = p["default"]
            if default is not None and default.startswith("'"):
                default = default[1:-1]
            params.append(Param(p["name"], p["type"], default, p["doc"] or ""))
        else:
            header[m["key"]] = m["value"]
    for key in ("name", "group", "what"):
        if not header.get(key):
            raise QueryFileError(f"{path.name}: the header has no '-- {key}:' line")
    if header["name"] != path.stem:
        raise QueryFileError(f"{path.name}: the header names it {header['name']!r}")
    if header["group"] not in groups:
        raise QueryFileError(f"{path.name}: group {header['group']!r} is not one of {', '.join(groups)}")
    sql = "\n".join(lines[body_start:]).strip().rstrip(";")
    if not sql:
        raise QueryFileError(f"{path.name}: no SQL after the header")
    declared = {p.name: p.type for p in params}
    if len(declared) != len(params):
        raise QueryFileError(f"{path.name}: a parameter is declared twice")
    used: dict[str, str] = {}
    for name, ch_type in PLACEHOLDER.findall(sql):
        if used.setdefault(name, ch_type) != ch_type:
            raise QueryFileError(f"{path.name}: {{{name}}} is used as {used[name]} and as {ch_type}")
    if used != declared:
        raise QueryFileError(f"{path.name}: the header declares {declared} but the SQL uses {used}")
    return NamedQuery(header["name"], header["group"], header["what"], sql, tuple(params), path)


@cache
def library(directory: Path = LIBRARY_DIR) -> dict[str, NamedQuery]:
    """Every query of the library, by name, in group order then name."""
    queries = [parse_query_file(p) for p in sorted(directory.glob("*.sql"))]
    queries.sort(key=lambda q: (GROUPS.index(q.group), q.name))
    return {q.name: q for q in queries}


def named(name: str) -> NamedQuery:
    try:
        return library()[name]
    except KeyError:
        raise ValueError(f"no query {name!r} in the library; `hpcinsight query --list` lists them") from None


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--param expects NAME=VALUE with NAME an identifier, got {pair!r}")
        params[key] = value
    return params


READONLY = {"readonly": 1}


def execute(client: Any, query: str, params: dict[str, str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a named query (typed parameters) or read-only SQL; returns column names and rows."""
    found = library().get(query)
    if found is not None:
        result = client.query(found.sql, parameters=found.bind(params), settings=READONLY)
    else:
        # One reading statement: readonly=1 refuses writes, but the embedded engine runs INTO OUTFILE
        # itself (a server leaves it to the client), and a refused second statement leaves chDB's
        # connection returning the first one's rows later. The store share checks the same.
        try:
            statement = reading_statement(query)
        except NotReadingError as err:
            raise ValueError(
                f"{query!r} is neither a named query (`hpcinsight query --list`) nor one reading statement: {err}"
            ) from None
        result = client.query(statement, parameters=params or None, settings=READONLY)
    return list(result.column_names), list(result.result_rows)


def records(client: Any, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A named query's rows as dicts (values given as Python values are passed through ``str``)."""
    columns, rows = execute(client, query, {k: str(v) for k, v in params.items()})
    return [dict(zip(columns, row)) for row in rows]


def plain_value(value: Any) -> Any:
    """A JSON/CSV-friendly value: full precision (machine readers must get what ClickHouse holds);
    NaN and infinities, which JSON cannot carry, become null."""
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    """A value for the human table: floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_shown(v) for v in value)
    return str(plain_value(value))


def make_console() -> Any:
    """A rich console that does not squeeze tables to 80 columns when output is piped."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 160))


def render(columns: list[str], rows: list[tuple[Any, ...]], fmt: str, title: str | None = None) -> None:
    if fmt == "json":
        print(json.dumps([{c: plain_value(v) for c, v in zip(columns, row)} for row in rows], default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[plain_value(v) for v in row] for row in rows])
    else:
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for row in rows:
            table.add_row(*(_shown(v) for v in row))
        make_console().print(table)


def list_queries(fmt: str) -> None:
    queries = library().values()
    if fmt == "table":
        render(
            ["name", "group", "parameters", "what"],
            [(q.name, q.group, " ".join(p.describe() for p in q.params), q.doc) for q in queries],
            fmt,
            title=f"query library ({LIBRARY_DIR})",
        )
        return
    columns = ["name", "group", "parameters", "what", "file"]
    rows = [
        (
            q.name,
            q.group,
            [{"name": p.name, "type": p.type, "default": p.default, "what": p.doc} for p in q.params],
            q.doc,
            str(q.path),
        )
        for q in queries
    ]
    if fmt == "csv":
        rows = [
            (n, g, " ".join(f"{p['name']}:{p['type']}={'' if p['default'] is None else p['default']}" for p in ps), w, f)
            for n, g, ps, w, f in rows
        ]
    render(columns, rows, fmt)


def run_query(settings: Settings, query: str | None, param_pairs: list[str], fmt: str, list_all: bool = False) -> int:
    if list_all or query == "list":
        list_queries(fmt)
        return 0
    if not query:
        raise ValueError("name a query (`hpcinsight query --list`) or give a SQL SELECT")
    from hpcinsight.sinks.clickhouse import connect

    params = parse_params(param_pairs)
    if query in library():
        library()[query].bind(params)  # refuse bad parameters before connecting
    client = connect(settings.clickhouse)
    try:
        columns, rows = execute(client, query, params)
    finally:
        client.close()
    render(columns, rows, fmt, title=query if query in library() else None)
    return 0
