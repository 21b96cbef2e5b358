"""Grafana dashboards built on the query library: ``python -m deploy.grafana.generate`` writes
``deploy/grafana/dashboards/*.json`` from ``sinks/queries/*.sql``, so no panel's SQL is written twice.

Each panel names one library query. Its SQL is the library file's body with the ClickHouse
``{name:Type}`` parameters turned into Grafana's: the look-back follows the dashboard's time range
(``${__range_s}``), a job comes from the ``job`` variable (``${job:singlequote}``), steps follow the
range, and every other parameter takes its default from the file's header, as a typed literal. The
datasource is the official ClickHouse plugin (``grafana-clickhouse-datasource``), provisioned by
``provisioning/datasources/clickhouse.yaml``. ``tests/test_grafana.py`` checks the JSON is what
this script writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcinsight.query import PLACEHOLDER, NamedQuery, library

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "hpcinsight-clickhouse"}
#: Grafana expressions for parameters that follow the dashboard
DYNAMIC = {
    "since_s": "toUInt32(${__range_s})",
    "job": "${job:singlequote}",
    "step_s": "toUInt32(greatest(60, intDiv(${__range_s}, 120)))",
}
MARKER = "-- hpcinsight query: "


@dataclass(frozen=True)
class Panel:
    query: str
    title: str
    kind: str = "table"  # table | timeseries
    width: int = 24
    height: int = 8
    overrides: dict[str, str] = field(default_factory=dict)  # parameter -> literal value


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "cluster-utilisation": ("hpcinsight · cluster utilisation", [
        Panel("allocation_rate", "Allocation rate (cluster)", "timeseries", 12),
        Panel("fragmentation", "Fragmentation: free and stranded GPUs", "timeseries", 12),
        Panel("zone_utilization", "Per zone: allocated share and utilisation", "table", 12),
        Panel("team_usage", "Per team: GPU-hours and utilisation", "table", 12),
        Panel("node_status", "Nodes now", "table", 24),
        Panel("cluster_now", "Every GPU now: job, utilisation, power, temperature, open anomalies", "table", 24, 12),
    ]),
    "job-quantiles": ("hpcinsight · job quantiles", [
        Panel("job_summary", "Job ${job} at a glance", "table", 24, 5),
        Panel("job_quantiles", "Jobs: p25/p50/p95 GPU utilisation since start (merged sketches)", "table", 12, 10),
        Panel("gpu_quantiles", "GPUs: p25/p50/p95 since their job started", "table", 12, 10),
        Panel("job_gpu_timeline", "Job ${job}: utilisation per GPU over time", "table", 12, 10),
        Panel("straggler_timeline", "Job ${job}: step time per rank", "table", 12, 10),
        Panel("underused_jobs", "Under-used jobs", "table", 24),
    ]),
    "anomalies": ("hpcinsight · anomalies", [
        Panel("anomalies", "Anomalies raised (firing and resolved)", "table", 24, 12),
        Panel("gpu_outliers", "Job ${job}: GPUs out of line with their peers", "table", 12, 10),
        Panel("step_flags", "Training-step incidents", "table", 12, 10),
        Panel("job_timeline", "Job ${job}: timeline", "table", 24, 10),
        Panel("dead_letters", "Dead letters", "table", 24),
    ]),
    "scheduling-kpis": ("hpcinsight · scheduling KPIs", [
        Panel("allocation_rate", "Allocation rate per GPU model", "timeseries", 12, overrides={"dimension": "gpu_model"}),
        Panel("allocation_rate", "Allocation rate per zone", "timeseries", 12, overrides={"dimension": "zone"}),
        Panel("wait_time_by_resource_type", "Queue wait by resource type", "table", 12),
        Panel("low_priority_usage", "Low-priority usage", "timeseries", 12),
        Panel("user_gpu_hours", "GPU-hours per user", "table", 12),
        Panel("fragmentation", "Fragmentation", "timeseries", 12),
    ]),
}


def _literal(value: str, ch_type: str) -> str:
    return f"CAST('{value.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}' AS {ch_type})"


def panel_sql(q: NamedQuery, overrides: dict[str, str]) -> str:
    """The library query's SQL with Grafana's values in place of its parameters."""
    params = {p.name: p for p in q.params}

    def value(match: re.Match[str]) -> str:
        name, ch_type = match.group(1), match.group(2)
        if name in overrides:
            return _literal(overrides[name], ch_type)
        if name in DYNAMIC:
            return DYNAMIC[name]
        default = params[name].default
        if default is None:
            raise ValueError(f"{q.name}: parameter {name} has no default and no Grafana value")
        return _literal(default, ch_type)

    return f"{MARKER}{q.name} ({q.path.name})\n" + PLACEHOLDER.sub(value, q.sql)


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    queries = library()
    out, x, y, row_h = [], 0, 0, 0
    for n, p in enumerate(panels, 1):
        q = queries[p.query]
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        timeseries = p.kind == "timeseries"
        out.append({
            "id": n, "type": p.kind, "title": p.title, "description": f"{q.doc} (library query {q.name})",
            "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
            "targets": [{"refId": "A", "datasource": DATASOURCE, "editorType": "sql", "rawSql": panel_sql(q, p.overrides),
                         "queryType": "timeseries" if timeseries else "table", "format": 0 if timeseries else 1}],
            "options": {} if timeseries else {"showHeader": True},
            "fieldConfig": {"defaults": {}, "overrides": []},
        })
        x, row_h = x + p.width, max(row_h, p.height)
    uses_job = any("job" in {par.name for par in queries[p.query].params} for p in panels)
    variables = [{
        "name": "job", "label": "job", "type": "query", "datasource": DATASOURCE, "refresh": 2,
        "query": "SELECT DISTINCT job_id FROM job_quantiles WHERE window_end >= now() - toIntervalSecond(${__range_s}) ORDER BY job_id",
        "definition": "jobs with quantiles in the time range",
    }] if uses_job else []
    return {
        "uid": f"hpcinsight-{uid}", "title": title, "tags": ["hpcinsight"], "timezone": "browser", "schemaVersion": 39,
        "editable": True, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables}, "panels": out,
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n" for uid, (title, panels) in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(OUT / name)


if __name__ == "__main__":
    main()
