"""deploy/grafana: the dashboards are what the generator writes from the query library, every panel
names a library query, its SQL runs on ClickHouse once Grafana fills its variables, and the
provisioning files are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deploy.grafana.generate import MARKER, OUT, panel_sql, render
from hpcinsight.query import library
from tests import query_scenario as scenario

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"


def panels() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(OUT.glob("*.json")):
        out += [(path.name, p) for p in json.loads(path.read_text())["panels"]]
    return out


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    written = {p.name: p.read_text() for p in OUT.glob("*.json")}
    assert written == render(), "run `python -m deploy.grafana.generate` and commit deploy/grafana/dashboards"


def test_every_panel_is_a_library_query() -> None:
    queries = library()
    found = panels()
    assert len(found) >= 20
    covered = set()
    for name, panel in found:
        [target] = panel["targets"]
        assert target["datasource"]["type"] == "grafana-clickhouse-datasource"
        sql = target["rawSql"]
        first = sql.splitlines()[0]
        assert first.startswith(MARKER), (name, panel["title"])
        query = first.removeprefix(MARKER).split()[0]
        assert query in queries, (name, query)
        assert f"library query {query}" in panel["description"]
        assert "{" not in re.sub(r"\$\{[^}]*\}", "", sql), f"{query}: a ClickHouse parameter was left unbound"
        # the library's SQL, nothing written by hand: the panel is the file with its parameters filled
        assert any(sql == panel_sql(queries[query], o) for o in ({}, {"dimension": "gpu_model"}, {"dimension": "zone"}))
        covered.add(query)
    assert {"cluster_now", "allocation_rate", "job_quantiles", "gpu_quantiles", "anomalies", "fragmentation"} <= covered


def test_provisioning_is_valid() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "grafana-clickhouse-datasource" and source["uid"] == "hpcinsight-clickhouse"
    assert "password" not in source.get("jsonData", {}) and source["secureJsonData"]["password"].startswith("$")
    boards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hpcinsight.yaml").read_text())
    assert boards["providers"][0]["options"]["path"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client, sc = scenario.open_store(tmp_path_factory.mktemp("grafana") / "ch")
    yield client
    client.close()


def test_every_panel_runs_on_clickhouse_with_grafanas_values(store) -> None:
    job = store.query("SELECT any(job_id) FROM job_quantiles").result_rows[0][0]
    assert job
    for name, panel in panels():
        sql = panel["targets"][0]["rawSql"].replace("${__range_s}", "86400").replace("${job:singlequote}", f"'{job}'")
        store.query(sql, settings={"readonly": 1})  # raises on any error
    for path in OUT.glob("*.json"):
        for var in json.loads(path.read_text())["templating"]["list"]:
            store.query(var["query"].replace("${__range_s}", "86400"), settings={"readonly": 1})
