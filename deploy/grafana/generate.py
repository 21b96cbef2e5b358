"""Grafana dashboards built on the query library: ``python -m hpcinsight.deploy.grafana.generate`` writes
``deploy/grafana/dashboards/*.json`` from ``sinks/queries/*.sql``, so no panel's SQL is written twice.

Each panel names one library query. The library's queries look back from now (``now64(3) -
toIntervalSecond({since_s})``); a panel follows Grafana's time picker instead, with the macros of the
official ClickHouse plugin (``grafana-clickhouse-datasource``), by these rewrites of the file's SQL:

* ``col >= now64(3) - toIntervalSecond({since_s})`` becomes ``$__timeFilter(col)`` (both bounds);
* ``now64(3) - toIntervalSecond({since_s}) AS since`` becomes ``$__fromTime AS since``, and each
  ``x > since`` / ``x >= since`` (also ``toStartOfHour(since)``) gets ``AND x <= $__toTime``;
* the library's views (``job_window``, ``job_gpu_buckets``) are written out as subqueries first
  (:func:`hpcinsight.sinks.views.inline_views`), so these rules reach into them;
* a job's span (``span.2 AS t1``, in ``job_window``) is cut to the range: ``least(span.2, $__toTime)
  AS t1``, and the job-scoped ``since_s`` is the range's start seen from there (in the queries that
  take a ``since_s``);
* every other ``now64(3)`` (the "now" of state tables) is ``$__toTime``: the state at the range's end;
* ``step_s`` and, in time-series panels, ``bucket_s`` follow ``$__interval_s``;
* a job comes from the ``job`` variable (``${job:singlequote}``); every other parameter takes its
  default from the file's header, as a typed literal.

A query these rules leave with ``now64``, ``now()`` or an unbound parameter is an error here, so a
library change cannot quietly anchor a panel to now again. Per-GPU and per-rank panels are time
series: the library query wrapped in a projection of the time, a series label and one value. The
datasource is a dashboard variable whose default is the ``DS_CLICKHOUSE`` import input, so the JSON
imports into any Grafana and also works as provisioned (``provisioning/``).
``tests/test_grafana.py`` checks the JSON is what this script writes, expands the macros as the
plugin documents them and runs every panel on a filled store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinsight.sinks.query import PLACEHOLDER, NamedQuery, library
from hpcinsight.sinks.views import inline_views

OUT = Path(__file__).resolve().parent / "dashboards"
PLUGIN = "grafana-clickhouse-datasource"
#: every panel's datasource: the dashboard's ``datasource`` variable (default: the import input)
DATASOURCE = {"type": PLUGIN, "uid": "${datasource}"}
#: Grafana expressions for parameters that follow the dashboard
DYNAMIC = {
    "job": "${job:singlequote}",
    "step_s": "toUInt32(greatest(60, $__interval_s))",  # KPI snapshots are a minute apart
}
#: bucket_s in time-series panels: Grafana's interval for the panel's width, at least 10 s
SERIES_BUCKET = "toUInt32(greatest(10, $__interval_s))"
#: the job-scoped since_s: from the range's start to the (cut) end of the job's span
JOB_SINCE = "toUInt32(greatest(1, dateDiff('second', $__fromTime, t1)))"
MARKER = "-- hpcinsight query: "


def _anchor(param: str) -> str:
    """The library's look-back from now over ``param`` seconds, as a pattern."""
    return rf"now64\(3\) - toIntervalSecond\(\{{{param}:UInt32\}}\)"


@dataclass(frozen=True)
class Panel:
    query: str
    title: str
    kind: str = "table"  # table | timeseries
    width: int = 24
    height: int = 8
    overrides: dict[str, str] = field(default_factory=dict)  # parameter -> literal value
    #: time series of one value per series: (time column, label expression, value column)
    series: tuple[str, str, str] | None = None


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "cluster-utilisation": (
        "hpcinsight · cluster utilisation",
        [
            Panel("allocation_rate", "Allocation rate (cluster)", "timeseries", 12, series=("t", "`group`", "allocation_rate")),
            Panel("fragmentation", "Fragmentation: free and stranded GPUs", "timeseries", 12),
            Panel("zone_utilization", "Per zone: allocated share and utilisation", "table", 12),
            Panel("team_usage", "Per team: GPU-hours and utilisation", "table", 12),
            Panel("node_status", "Nodes now", "table", 24),
            Panel("cluster_now", "Every GPU now: job, utilisation, power, temperature, open anomalies", "table", 24, 12),
        ],
    ),
    "job-quantiles": (
        "hpcinsight · job quantiles",
        [
            Panel("job_summary", "Job ${job} at a glance", "table", 24, 5),
            Panel("job_quantiles", "Jobs: p25/p50/p95 GPU utilisation since start (merged sketches)", "table", 12, 10),
            Panel("gpu_quantiles", "GPUs: p25/p50/p95 since their job started", "table", 12, 10),
            Panel(
                "job_gpu_timeline",
                "Job ${job}: utilisation per GPU",
                "timeseries",
                12,
                10,
                series=("bucket", "concat(node, ' gpu ', toString(gpu))", "util"),
            ),
            Panel(
                "job_gpu_timeline",
                "Job ${job}: power per GPU (W)",
                "timeseries",
                12,
                10,
                series=("bucket", "concat(node, ' gpu ', toString(gpu))", "power_w"),
            ),
            Panel(
                "straggler_timeline",
                "Job ${job}: median step time per rank (s)",
                "timeseries",
                12,
                10,
                series=("bucket", "concat('rank ', toString(rank))", "step_s"),
            ),
            Panel(
                "straggler_timeline",
                "Job ${job}: step time against the median rank",
                "timeseries",
                12,
                10,
                series=("bucket", "concat('rank ', toString(rank))", "vs_median"),
            ),
            Panel("underused_jobs", "Under-used jobs", "table", 24),
        ],
    ),
    "anomalies": (
        "hpcinsight · anomalies",
        [
            Panel("anomalies", "Anomalies raised (firing and resolved)", "table", 24, 12),
            Panel("gpu_outliers", "Job ${job}: GPUs out of line with their peers", "table", 12, 10),
            Panel("step_flags", "Training-step incidents", "table", 12, 10),
            Panel("job_timeline", "Job ${job}: timeline", "table", 24, 10),
            Panel("dead_letters", "Dead letters", "table", 24),
        ],
    ),
    "scheduling-kpis": (
        "hpcinsight · scheduling KPIs",
        [
            Panel(
                "allocation_rate",
                "Allocation rate per GPU model",
                "timeseries",
                12,
                overrides={"dimension": "gpu_model"},
                series=("t", "`group`", "allocation_rate"),
            ),
            Panel(
                "allocation_rate",
                "Allocation rate per zone",
                "timeseries",
                12,
                overrides={"dimension": "zone"},
                series=("t", "`group`", "allocation_rate"),
            ),
            Panel("wait_time_by_resource_type", "Queue wait by resource type", "table", 12),
            Panel("low_priority_usage", "Low-priority usage", "timeseries", 12),
            Panel("user_gpu_hours", "GPU-hours per user", "table", 12),
            Panel("fragmentation", "Fragmentation", "timeseries", 12),
        ],
    ),
}


def _literal(value: str, ch_type: str) -> str:
    return f"CAST('{value.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}' AS {ch_type})"


def panel_sql(q: NamedQuery, overrides: dict[str, str], series: bool = False) -> str:
    """The library query's SQL, following the time picker, with Grafana's values in place of its
    parameters (the rewrites in the module's docstring)."""
    params = {p.name: p for p in q.params}
    sql = re.sub(rf"([\w.`]+) >= {_anchor('since_s')}", r"$__timeFilter(\1)", inline_views(q.sql))
    sql = re.sub(
        rf"([\w.`]+) >= {_anchor('within_s')}", r"\1 >= $__toTime - toIntervalSecond({within_s:UInt32}) AND \1 <= $__toTime", sql
    )
    since = re.sub(rf"{_anchor('since_s')} AS since\b", "$__fromTime AS since", sql)
    since = re.sub(rf"{_anchor('within_s')} AS since\b", "$__toTime - toIntervalSecond({within_s:UInt32}) AS since", since)
    if since != sql:  # a window named `since`: each comparison with it gets the range's end too
        sql = re.sub(r"([\w.`]+) (>=?) (toStartOfHour\(since\)|since)(?![\w(])", r"\1 \2 \3 AND \1 <= $__toTime", since)
    job_span = "span.2 AS t1" in sql and "since_s" in params  # job_summary's span stays the job's
    if job_span:
        sql = sql.replace("span.2 AS t1", "least(span.2, $__toTime) AS t1")
    sql = sql.replace("now64(3)", "$__toTime")

    def value(match: re.Match[str]) -> str:
        name, ch_type = match.group(1), match.group(2)
        if name in overrides:
            return _literal(overrides[name], ch_type)
        if name == "since_s" and job_span:
            return JOB_SINCE
        if name == "bucket_s" and series:
            return SERIES_BUCKET
        if name in DYNAMIC:
            return DYNAMIC[name]
        default = params[name].default
        if default is None:
            raise ValueError(f"{q.name}: parameter {name} has no default and no Grafana value")
        return _literal(default, ch_type)

    sql = PLACEHOLDER.sub(value, sql)
    if "{since_s" in q.sql and "$__" not in sql or re.search(r"\bnow(64)?\(", sql):
        raise ValueError(f"{q.name}: its time window is not one the rewrites know; it would not follow the time picker")
    return f"{MARKER}{q.name} ({q.path.name})\n" + sql


def series_sql(q: NamedQuery, overrides: dict[str, str], series: tuple[str, str, str]) -> str:
    """A time series of one value per label: the panel's library query, projected."""
    time, label, value = series
    body = panel_sql(q, overrides, series=True)
    marker, sql = body.split("\n", 1)
    return f"{marker}\nSELECT {time} AS time, {label} AS series, {value}\nFROM (\n{sql}\n)\nORDER BY time, series"


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    queries = library()
    out, x, y, row_h = [], 0, 0, 0
    for n, p in enumerate(panels, 1):
        q = queries[p.query]
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        timeseries = p.kind == "timeseries"
        sql = series_sql(q, p.overrides, p.series) if p.series else panel_sql(q, p.overrides, series=timeseries)
        out.append(
            {
                "id": n,
                "type": p.kind,
                "title": p.title,
                "description": f"{q.doc} (library query {q.name})",
                "datasource": DATASOURCE,
                "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
                "targets": [
                    {
                        "refId": "A",
                        "datasource": DATASOURCE,
                        "editorType": "sql",
                        "rawSql": sql,
                        "queryType": "timeseries" if timeseries else "table",
                        "format": 0 if timeseries else 1,
                    }
                ],
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
                if timeseries
                else {"showHeader": True},
                "fieldConfig": {"defaults": {}, "overrides": []},
            }
        )
        x, row_h = x + p.width, max(row_h, p.height)
    uses_job = any("job" in {par.name for par in queries[p.query].params} for p in panels)
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "ClickHouse",
            "type": "datasource",
            "query": PLUGIN,
            "refresh": 1,
            "current": {"text": "${DS_CLICKHOUSE}", "value": "${DS_CLICKHOUSE}"},
            "hide": 0,
        }
    ]
    if uses_job:
        variables.append(
            {
                "name": "job",
                "label": "job",
                "type": "query",
                "datasource": DATASOURCE,
                "refresh": 2,
                "query": "SELECT DISTINCT job_id FROM job_quantiles WHERE $__timeFilter(window_end) ORDER BY job_id",
                "definition": "jobs with quantiles in the time range",
            }
        )
    kinds = sorted({p.kind for p in panels})
    return {
        "__inputs": [
            {
                "name": "DS_CLICKHOUSE",
                "label": "ClickHouse",
                "description": "the hpcinsight store",
                "type": "datasource",
                "pluginId": PLUGIN,
                "pluginName": "ClickHouse",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": PLUGIN, "name": "ClickHouse", "version": "4.3.0"},
            *({"type": "panel", "id": k, "name": k} for k in kinds),
        ],
        "uid": f"hpcinsight-{uid}",
        "title": title,
        "tags": ["hpcinsight"],
        "timezone": "browser",
        "schemaVersion": 39,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": out,
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n" for uid, (title, panels) in DASHBOARDS.items()
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(OUT / name)


if __name__ == "__main__":
    main()
