"""``hpcinsight query``: named queries and ad-hoc SQL, read-only, parameters bound by ClickHouse.

Named queries use ``{name:Type}`` placeholders; values given with ``--param k=v`` are sent
as typed parameters and never formatted into the SQL text, so a hostile value is an error
or a literal, never SQL. Ad-hoc SQL runs with ``readonly=1``. The full query library comes
with issue 5; these are the first few.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from hpcinsight.config import Settings


@dataclass(frozen=True)
class NamedQuery:
    name: str
    doc: str
    sql: str
    params: dict[str, str]  # name -> default value ('' = required)


NAMED: dict[str, NamedQuery] = {
    q.name: q
    for q in (
        NamedQuery(
            "gpu_quantiles",
            "per GPU: its job, p25/p50/p95 of utilisation since the job started (stream sketches), "
            "the p95 of its latest shortest window, and its flags",
            """
            SELECT s.node AS node, s.gpu_index AS gpu, s.job AS job, s.samples AS samples,
                   round(s.p25, 1) AS p25, round(s.p50, 1) AS p50, round(s.p95, 1) AS p95,
                   round(w.last_p95, 1) AS last_window_p95, a.flags AS anomalies
            FROM (
                SELECT node, gpu_index, gpu_uuid, argMax(job_id, window_end) AS job, argMax(count, window_end) AS samples,
                       argMax(p25, window_end) AS p25, argMax(p50, window_end) AS p50, argMax(p95, window_end) AS p95
                FROM gpu_quantiles FINAL
                WHERE metric = 'gpu_util' AND window = 'since_start'
                  AND window_end >= now64(3) - toIntervalSecond({since_s:UInt32})
                GROUP BY node, gpu_index, gpu_uuid
            ) AS s
            LEFT JOIN (
                SELECT gpu_uuid, argMax(p95, (window_end, window_start)) AS last_p95
                FROM gpu_quantiles FINAL WHERE metric = 'gpu_util' AND window != 'since_start' GROUP BY gpu_uuid
            ) AS w ON w.gpu_uuid = s.gpu_uuid
            LEFT JOIN (
                SELECT gpu_uuid, arrayStringConcat(arraySort(groupArray(
                           concat(kind, if(incidents > 1, concat(' x', toString(incidents)), ''),
                                  if(open > 0, ' (firing)', ' (resolved)')))), ', ') AS flags
                FROM (
                    SELECT gpu_uuid, kind, count() AS incidents, countIf(state = 'firing') AS open
                    FROM (
                        SELECT assumeNotNull(gpu_uuid) AS gpu_uuid, kind, id,
                               if(countIf(state = 'resolved') > 0, 'resolved', 'firing') AS state
                        FROM anomalies FINAL
                        WHERE gpu_uuid IS NOT NULL AND ts >= now64(3) - toIntervalSecond({since_s:UInt32})
                        GROUP BY gpu_uuid, kind, id
                    )
                    GROUP BY gpu_uuid, kind
                )
                GROUP BY gpu_uuid
            ) AS a ON a.gpu_uuid = s.gpu_uuid
            ORDER BY node, gpu
            """,
            {"since_s": "86400"},
        ),
        NamedQuery(
            "job_quantiles",
            "per job: user, team, GPUs, and p25/p50/p95 of GPU utilisation since the job started (merged GPU sketches)",
            """
            SELECT job_id AS job, argMax(user, window_end) AS user, argMax(team, window_end) AS team,
                   argMax(gpus, window_end) AS gpus, argMax(count, window_end) AS samples,
                   round(argMax(p25, window_end), 1) AS p25, round(argMax(p50, window_end), 1) AS p50,
                   round(argMax(p95, window_end), 1) AS p95, max(window_end) AS as_of
            FROM job_quantiles FINAL
            WHERE metric = 'gpu_util' AND window = 'since_start'
              AND window_end >= now64(3) - toIntervalSecond({since_s:UInt32})
            GROUP BY job_id
            ORDER BY job_id
            """,
            {"since_s": "86400"},
        ),
        NamedQuery(
            "anomalies",
            "anomalies raised in the last since_s seconds, firing and resolved",
            """
            SELECT id, kind, state, toDateTime(started_at) AS since, toDateTime(window_end) AS seen_at, message
            FROM anomalies FINAL
            WHERE ts >= now64(3) - toIntervalSecond({since_s:UInt32})
            ORDER BY started_at, id, state = 'resolved'
            """,
            {"since_s": "86400"},
        ),
        NamedQuery(
            "dead_letters",
            "messages no stage could use, with the reason",
            """
            SELECT ts, source_topic, source_partition, source_offset, stage, reason, length(raw) AS bytes
            FROM dead_letters FINAL ORDER BY ts DESC LIMIT {limit:UInt32}
            """,
            {"limit": "100"},
        ),
        NamedQuery(
            "counts",
            "rows per table",
            """
            SELECT table, rows FROM (
                SELECT 1 AS i, 'gpu_samples' AS table, count() AS rows FROM gpu_samples FINAL
                UNION ALL SELECT 2, 'gpu_quantiles', count() FROM gpu_quantiles FINAL
                UNION ALL SELECT 3, 'anomalies', count() FROM anomalies FINAL
                UNION ALL SELECT 4, 'dead_letters', count() FROM dead_letters FINAL
                UNION ALL SELECT 5, 'ib_samples', count() FROM ib_samples FINAL
                UNION ALL SELECT 6, 'agent_health', count() FROM agent_health FINAL
                UNION ALL SELECT 7, 'job_quantiles', count() FROM job_quantiles FINAL
            ) ORDER BY i
            """,
            {},
        ),
    )
}


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--param expects NAME=VALUE with NAME an identifier, got {pair!r}")
        params[key] = value
    return params


def execute(client: Any, query: str, params: dict[str, str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a named query (typed parameters) or read-only SQL; returns column names and rows."""
    named = NAMED.get(query)
    if named is not None:
        unknown = set(params) - set(named.params)
        if unknown:
            raise ValueError(f"query {named.name!r} takes {', '.join(named.params) or 'no parameters'}; unknown: {', '.join(sorted(unknown))}")
        values = {**named.params, **params}
        missing = [k for k, v in values.items() if v == ""]
        if missing:
            raise ValueError(f"query {named.name!r} needs --param {missing[0]}=...")
        result = client.query(named.sql, parameters=values, settings={"readonly": 1})
    else:
        if not query.strip().lower().startswith(("select", "with", "show", "describe", "desc", "explain")):
            raise ValueError(f"{query!r} is neither a named query ({', '.join(NAMED)}) nor a SELECT")
        result = client.query(query, parameters=params or None, settings={"readonly": 1})
    return list(result.column_names), list(result.result_rows)


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly value: full precision (machine readers must get what ClickHouse holds);
    NaN and infinities, which JSON cannot carry, become null."""
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _shown(value: Any) -> str:
    """A value for the human table: floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(_plain(value))


def make_console() -> Any:
    """A rich console that does not squeeze tables to 80 columns when output is piped."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 160))


def render(columns: list[str], rows: list[tuple[Any, ...]], fmt: str, title: str | None = None) -> None:
    if fmt == "json":
        print(json.dumps([{c: _plain(v) for c, v in zip(columns, row)} for row in rows], default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in row] for row in rows])
    else:
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for row in rows:
            table.add_row(*(_shown(v) for v in row))
        make_console().print(table)


def run_query(settings: Settings, query: str, param_pairs: list[str], fmt: str) -> int:
    if query == "list":
        render(["name", "parameters", "what"], [(q.name, " ".join(f"{k}={v or '?'}" for k, v in q.params.items()), q.doc) for q in NAMED.values()], fmt)
        return 0
    from sinks.clickhouse import connect

    params = parse_params(param_pairs)
    client = connect(settings.clickhouse)
    try:
        columns, rows = execute(client, query, params)
    finally:
        client.close()
    render(columns, rows, fmt, title=query if query in NAMED else None)
    return 0
