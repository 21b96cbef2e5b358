"""deploy/grafana: the dashboards are what the generator writes from the query library, every panel
names a library query and follows the time picker, its SQL runs on ClickHouse once its macros are
expanded as the Grafana ClickHouse plugin documents them, the datasource is an import input, and
the provisioning files are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hpcinsight.deploy.grafana.generate import DASHBOARDS, MARKER, OUT, PLUGIN, panel_sql, render, series_sql
from hpcinsight.sinks.query import library
from tests import query_scenario as scenario

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"


def panels() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(OUT.glob("*.json")):
        out += [(path.name, p) for p in json.loads(path.read_text())["panels"]]
    return out


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    written = {p.name: p.read_text() for p in OUT.glob("*.json")}
    assert written == render(), "run `python -m hpcinsight.deploy.grafana.generate` and commit deploy/grafana/dashboards"


def test_every_panel_is_a_library_query() -> None:
    queries = library()
    found = panels()
    assert len(found) >= 20
    covered = set()
    by_title = {p.title: p for _uid, (_t, ps) in DASHBOARDS.items() for p in ps}
    for name, panel in found:
        [target] = panel["targets"]
        assert target["datasource"] == {"type": PLUGIN, "uid": "${datasource}"} == panel["datasource"]
        sql = target["rawSql"]
        first = sql.splitlines()[0]
        assert first.startswith(MARKER), (name, panel["title"])
        query = first.removeprefix(MARKER).split()[0]
        assert query in queries, (name, query)
        assert f"library query {query}" in panel["description"]
        assert "{" not in re.sub(r"\$\{[^}]*\}", "", sql), f"{query}: a ClickHouse parameter was left unbound"
        # the library's SQL, rewritten by the documented rules only: nothing written by hand
        spec = by_title[panel["title"]]
        expected = (
            series_sql(queries[query], spec.overrides, spec.series)
            if spec.series
            else panel_sql(queries[query], spec.overrides, series=spec.kind == "timeseries")
        )
        assert sql == expected
        covered.add(query)
    assert {"cluster_now", "allocation_rate", "job_quantiles", "gpu_quantiles", "anomalies", "fragmentation"} <= covered


def test_panels_follow_the_time_picker() -> None:
    """No panel is anchored to now: a library query with a look-back reads Grafana's range."""
    queries = library()
    for name, panel in panels():
        sql = panel["targets"][0]["rawSql"]
        assert not re.search(r"\bnow(64)?\(|__range", sql), (name, panel["title"])
        query = queries[sql.splitlines()[0].removeprefix(MARKER).split()[0]]
        if query.param("since_s") or query.param("within_s") or query.param("step_s"):
            assert "$__timeFilter(" in sql or "$__fromTime" in sql or "$__toTime" in sql, (name, panel["title"])
        if query.param("step_s"):
            assert "$__interval_s" in sql, (name, panel["title"])


def test_per_gpu_and_per_rank_panels_are_time_series() -> None:
    series = {}
    for _name, panel in panels():
        target = panel["targets"][0]
        if panel["type"] == "timeseries":
            assert target["format"] == 0 and target["queryType"] == "timeseries"
            series[panel["title"]] = target["rawSql"]
    assert any("per GPU" in t and "gpu ', toString(gpu)" in sql for t, sql in series.items())
    assert any("per rank" in t and "'rank ', toString(rank)" in sql for t, sql in series.items())


def test_the_datasource_is_an_import_input() -> None:
    for path in sorted(OUT.glob("*.json")):
        board = json.loads(path.read_text())
        [source] = board["__inputs"]
        assert source["type"] == "datasource" and source["pluginId"] == PLUGIN
        [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
        assert variable["type"] == "datasource" and variable["query"] == PLUGIN
        assert variable["current"]["value"] == "${" + source["name"] + "}"
        assert any(r["id"] == PLUGIN and r["type"] == "datasource" for r in board["__requires"])
        assert "hpcinsight-clickhouse" not in path.read_text()  # no datasource uid of one installation


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


def expand(sql: str, start_ms: int, end_ms: int, interval_s: int, job: str) -> str:
    """Grafana's and the ClickHouse plugin's macros, as the plugin documents their expansion."""
    s, e = start_ms // 1000, end_ms // 1000
    sql = re.sub(
        r"\$__timeFilter_ms\(([^)]+)\)",
        lambda m: f"{m.group(1)} >= fromUnixTimestamp64Milli({start_ms}) AND {m.group(1)} <= fromUnixTimestamp64Milli({end_ms})",
        sql,
    )
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} >= toDateTime({s}) AND {m.group(1)} <= toDateTime({e})", sql
    )
    sql = sql.replace("$__fromTime_ms", f"fromUnixTimestamp64Milli({start_ms})").replace(
        "$__toTime_ms", f"fromUnixTimestamp64Milli({end_ms})"
    )
    sql = sql.replace("$__fromTime", f"toDateTime({s})").replace("$__toTime", f"toDateTime({e})")
    sql = sql.replace("$__interval_s", str(interval_s)).replace("${job:singlequote}", f"'{job}'")
    assert "$" not in sql, sql
    return sql


def run_panel(store, sql: str, start_ms: int, end_ms: int, interval_s: int = 60, job: str = "job-a"):
    return store.query(expand(sql, start_ms, end_ms, interval_s, job), settings={"readonly": 1})


def story_span(store) -> tuple[int, int]:
    first, last = store.query(
        "SELECT toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)) FROM gpu_samples"
    ).result_rows[0]
    return first, last


def test_every_panel_runs_on_clickhouse_with_grafanas_values(store) -> None:
    first, last = story_span(store)
    assert store.query("SELECT count() FROM job_quantiles WHERE job_id = 'job-a'").result_rows[0][0]
    start, end = first - 3_600_000, last + 10_000  # "now" panels show the state at the range's end
    empty = []
    for _name, panel in panels():
        result = run_panel(store, panel["targets"][0]["rawSql"], start, end)  # raises on any error
        if not result.result_rows:
            empty.append(panel["title"])
    # a range over the story finds it: nearly every panel has rows (dead letters: none in the story)
    assert set(empty) <= {"Dead letters"}, empty
    for path in OUT.glob("*.json"):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] == "query":
                rows = store.query(expand(var["query"], start, end, 60, ""), settings={"readonly": 1}).result_rows
                assert ("job-a",) in rows


def test_a_range_before_the_story_shows_nothing_of_it(store) -> None:
    """Last Tuesday shows last Tuesday: a range that ends before the first sample finds no rows,
    where the old panels, anchored to now, showed the last N seconds whatever the range."""
    first, _last = story_span(store)
    start, end = first - 30 * 86_400_000, first - 29 * 86_400_000
    for name, panel in panels():
        result = run_panel(store, panel["targets"][0]["rawSql"], start, end)
        rows = result.result_rows
        if panel["title"] == "Job ${job} at a glance":  # the job's card: who, where, when, whatever the range
            continue
        if panel["title"] == "Nodes now":  # the inventory's nodes, every one silent then
            status = result.column_names.index("status")
            assert rows and {row[status] for row in rows} == {"silent"}, rows
            continue
        assert rows == [] or all(v in (0, None, "") for row in rows for v in row[1:] if not isinstance(v, str)), (
            name,
            panel["title"],
            rows[:3],
        )


def test_time_series_stay_inside_the_range(store) -> None:
    """A range over the second half of job-a: every point of every time series is inside it (to
    one bucket), and the per-GPU panel has a series for each of the job's 16 GPUs."""
    first, last = story_span(store)
    start, end = first + 10 * 60_000, first + 20 * 60_000
    interval = 30
    for _name, panel in panels():
        if panel["type"] != "timeseries":
            continue
        result = run_panel(store, panel["targets"][0]["rawSql"], start, end, interval)
        times = [row[0] for row in result.result_rows]
        assert times, panel["title"]
        assert times == sorted(times), f"{panel['title']}: Grafana needs long series sorted by time"
        for t in times:
            ms = int(t.timestamp() * 1000)
            assert start - max(interval, 60) * 1000 <= ms <= end, (panel["title"], t)
        if panel["title"] == "Job ${job}: utilisation per GPU":
            assert len({row[1] for row in result.result_rows}) == 16
