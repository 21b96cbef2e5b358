"""The query library's views (sinks/queries/views/*.sql): written once, the same rows as the SQL they replace.

``job_window`` (a job's span, cut to ``since_s``, and its default bucket) and ``job_gpu_buckets``
(the job's GPUs per bucket, from the raw samples or the per-minute rollup) were typed out in up to
seven query files. They are parameterized views now, created by ``migrate``. These tests hold them
to their definition on the real engine (embedded chDB) with :mod:`tests.query_scenario`'s story:
the window and the buckets computed here from the scenario's records, every job-scoped query equal
to its views written out (and to the library as it was before the views, where git has it), and
no query file typing a view's SQL again.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from hpcinsight.sinks.migrations import MIGRATIONS, migrate
from hpcinsight.sinks.query import LIBRARY_DIR, PLACEHOLDER, READONLY, library, parse_query_file
from hpcinsight.sinks.storage import Layout
from hpcinsight.sinks.views import COMMENT_PREFIX, comment, inline_views, view_ddl, views
from tests import query_scenario as scenario

S = 1000
#: the commit before the views: the library's job-scoped queries as they were typed out
BEFORE_VIEWS = "eb63c15"
JOB_QUERIES = (
    "gpu_outliers",
    "job_gpu_timeline",
    "job_ib_timeline",
    "job_summary",
    "job_timeline",
    "metric_correlation",
    "straggler_timeline",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    client, sc = scenario.open_store(tmp_path_factory.mktemp("views") / "ch")
    yield client, sc
    client.close()


def rows(client, sql: str, params: dict) -> list[tuple]:
    return client.query(sql, parameters=params, settings=READONLY).result_rows


# -- written once ---------------------------------------------------------------------------
def _normal(sql: str) -> str:
    """SQL without comments, whitespace and parentheses, each ``{name:Type}`` as its name: a view's
    line found in this form is the view typed again, however it was indented or parenthesised."""
    text = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return re.sub(r"[\s()]", "", PLACEHOLDER.sub(lambda m: m.group(1), text))


def retyped(sql: str) -> list[str]:
    """The lines of the library's views that ``sql`` contains (those of at least 32 characters of
    SQL: shorter ones, such as "bucket_s if given", are said alike elsewhere for reasons of their own)."""
    body = _normal(sql)
    found = []
    for view in views().values():
        for line in view.sql.splitlines():
            piece = _normal(line)
            if len(piece) >= 32 and piece in body:
                found.append(f"{view.name}: {line.strip()}")
    return found


def test_no_query_file_types_a_view_again() -> None:
    assert set(views()) == {"job_window", "job_gpu_buckets"}
    for q in library().values():
        assert retyped(q.path.read_text()) == [], f"{q.path.name} types out a view's SQL; call the view instead"
    # the job's span, its default buckets and the rollup's means are read nowhere but in the views
    for q in library().values():
        flat = re.sub(r"\s", "", q.sql)
        for signature in (
            "FROMjob_rollup_1mWHERE",
            "ceil(span_s/7200)",
            "%60!=0",
            "avgMerge(gpu_util_avg),avgMerge(power_w_avg),avgMerge(sm_clock_mhz_avg)",
        ):
            assert signature not in flat, (q.name, signature)


def test_the_guard_finds_a_view_written_out() -> None:
    """The check above fails on a file that holds a view's SQL: each query with its views inlined."""
    for name in JOB_QUERIES:
        q = library()[name]
        assert "job_window(" in q.sql
        found = retyped(inline_views(q.sql))
        assert any(f.startswith("job_window: ") for f in found), name
        if "job_gpu_buckets(" in q.sql:
            assert any(f.startswith("job_gpu_buckets: ") for f in found), name
    assert {n for n in JOB_QUERIES if "job_gpu_buckets(" in library()[n].sql} == {
        "gpu_outliers",
        "job_gpu_timeline",
        "job_timeline",
        "metric_correlation",
    }


def test_view_files_are_library_files_outside_the_list() -> None:
    for path in sorted((LIBRARY_DIR / "views").glob("*.sql")):
        view = parse_query_file(path, groups=("view",))  # header and placeholders agree
        assert view.name == path.stem and view.doc
        assert view.name not in library()  # `hpcinsight query --list` lists queries, not views
    with pytest.raises(ValueError, match="group"):
        parse_query_file(LIBRARY_DIR / "views" / "job_window.sql")


# -- the views' DDL and their upkeep ---------------------------------------------------------------
def test_migration_6_creates_the_views_on_one_server_and_on_a_cluster() -> None:
    [six] = [m for m in MIGRATIONS if m.version == 6]
    single, cluster = six.statements(Layout()), six.statements(Layout(database="telemetry", cluster="gpu-prod"))
    assert len(single) == len(cluster) == len(views())
    for view, one, many in zip(views().values(), single, cluster):
        assert one.startswith(f"CREATE OR REPLACE VIEW `{view.name}` AS\n") and "ON CLUSTER" not in one
        assert many.startswith(f"CREATE OR REPLACE VIEW `{view.name}` ON CLUSTER 'gpu-prod' AS\n")
        # the plain names: the Distributed tables on a cluster, so a view reads every shard
        assert "_local" not in many and view.sql in many
        assert one.endswith(f"COMMENT '{comment(view)}'") and view_ddl(Layout(), view) == one


def test_migrate_puts_back_a_view_that_differs_from_the_build(tmp_path: Path) -> None:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        first = migrate(client, Layout())
        assert (6, MIGRATIONS[5].name) in first.applied and first.views_replaced == []
        stored = dict(
            client.query(
                "SELECT name, comment FROM system.tables WHERE database = currentDatabase() AND engine = 'View'"
            ).result_rows
        )
        assert stored == {name: comment(v) for name, v in views().items()}
        assert all(c.startswith(COMMENT_PREFIX) for c in stored.values())
        # an edited view (an older build's, or by hand) and a dropped one come back as the files say
        client.command("CREATE OR REPLACE VIEW job_window AS SELECT 1 AS t0 COMMENT 'older'")
        client.command("DROP VIEW job_gpu_buckets")
        again = migrate(client, Layout())
        assert again.applied == [] and sorted(again.views_replaced) == ["job_gpu_buckets", "job_window"]
        assert client.query("SELECT b FROM job_window(job = 'none', since_s = 0, bucket_s = 45)").result_rows == [(45,)]
        assert migrate(client, Layout()).views_replaced == []
    finally:
        client.close()


# -- the rows --------------------------------------------------------------------------------------
def expected_window(sc: scenario.Scenario, job: str, since_s: int, bucket_s: int) -> tuple[int, int, int, int]:
    """(t0 ms, t1 ms, span_s, b) by job_window's definition, from the job's samples."""
    minutes = [s.ts // 60_000 * 60_000 for s in sc.samples if s.job_id == job]
    t1 = max(minutes) + 60_000
    t0 = max(min(minutes), t1 - since_s * S) if since_s > 0 else min(minutes)
    span_s = (t1 - t0) // S
    b = bucket_s or (max(10, 10 * math.ceil(span_s / 600)) if span_s <= 3600 else 60 * math.ceil(span_s / 7200))
    return t0, t1, span_s, b


def ms(value: dt.datetime) -> int:
    return round((value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp() * 1000)


@pytest.mark.parametrize(
    "job, since_s, bucket_s",
    [
        ("job-a", 0, 0),
        ("job-a", 300, 0),
        ("job-a", 0, 25),
        ("job-b", 90, 0),
        ("job-c", 100_000, 120),
    ],
)
def test_job_window_is_the_jobs_minutes_cut_to_since_s(store, job: str, since_s: int, bucket_s: int) -> None:
    client, sc = store
    [(t0, t1, span_s, b)] = rows(
        client,
        "SELECT t0, t1, span_s, b FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})",
        {"job": job, "since_s": since_s, "bucket_s": bucket_s},
    )
    assert (ms(t0), ms(t1), span_s, b) == expected_window(sc, job, since_s, bucket_s)


@pytest.mark.parametrize(
    "job, since_s, bucket_s",
    [
        ("job-a", 0, 0),
        ("job-a", 0, 120),
        ("job-a", 450, 30),
        ("job-c", 0, 7),
        ("job-b", 125, 60),
    ],
)
def test_job_gpu_buckets_are_the_means_of_the_samples(store, job: str, since_s: int, bucket_s: int) -> None:
    """Whole-minute buckets (from gpu_rollup_1m: minutes that start in the window) and other buckets
    (from gpu_samples: samples in the window) hold the mean of the samples behind them."""
    client, sc = store
    t0, t1, _span, b = expected_window(sc, job, since_s, bucket_s)
    got = rows(
        client,
        """
        WITH (SELECT (t0, t1, b) FROM job_window(job = {job:String}, since_s = {since_s:UInt32}, bucket_s = {bucket_s:UInt32})) AS w
        SELECT node, gpu_index, gpu_uuid, toUnixTimestamp(bucket), u, p, c, samples
        FROM job_gpu_buckets(job = {job:String}, t0 = w.1, t1 = w.2, b = w.3)
        ORDER BY node, gpu_index, bucket""",
        {"job": job, "since_s": since_s, "bucket_s": bucket_s},
    )
    groups: dict[tuple, list] = defaultdict(list)
    for s in sc.samples:
        at = s.ts // 60_000 * 60_000 if b % 60 == 0 else s.ts  # the rollup keeps minutes
        if s.job_id == job and t0 <= at < t1:
            groups[(s.node, s.gpu_index, s.gpu_uuid, s.ts // (b * S) * b)].append(s)
    assert [r[:4] for r in got] == sorted(groups)
    for row in got:
        members = groups[row[:4]]
        for value, field in zip(row[4:7], ("gpu_util", "power_w", "sm_clock_mhz")):
            want = np.mean(np.array([getattr(s, field) for s in members], dtype=np.float32).astype(np.float64))
            assert value == pytest.approx(want, rel=1e-9), (row[:4], field)
        assert row[7] == len(members)


def test_a_job_with_no_data_has_an_empty_window(store) -> None:
    client, _sc = store
    for name in ("job_gpu_timeline", "gpu_outliers", "job_ib_timeline", "straggler_timeline"):
        assert rows(client, library()[name].sql, library()[name].bind({"job": "no-such-job"})) == [], name
    pairs = rows(client, library()["metric_correlation"].sql, library()["metric_correlation"].bind({"job": "no-such-job"}))
    assert len(pairs) == 10 and all(n == 0 for *_, n in pairs)  # every pair, over no observation


#: parameters over both bucket paths, cut and whole windows, and a job with no data
GRID = [
    {"job": job, "bucket_s": bucket, "since_s": since}
    for job in ("job-a", "job-b", "job-c", "no-such-job")
    for bucket, since in (("0", "0"), ("60", "0"), ("30", "600"), ("120", "120"), ("0", "100000"))
]


def _cases(name: str) -> list[dict[str, str]]:
    takes = {p.name for p in library()[name].params}
    return list({tuple(sorted((k, v) for k, v in g.items() if k in takes)): None for g in GRID})


@pytest.mark.parametrize("name", JOB_QUERIES)
def test_each_job_query_gives_the_rows_of_its_views_written_out(store, name: str) -> None:
    """The views in the store are the SQL of their files: the same rows as the query with every view
    call replaced by the view's SQL (as the Grafana dashboards run it)."""
    client, _sc = store
    q = library()[name]
    inlined = inline_views(q.sql)
    assert "job_window(" not in inlined and "job_gpu_buckets(" not in inlined
    for case in _cases(name):
        params = q.bind(dict(case))
        assert rows(client, q.sql, params) == rows(client, inlined, params), (name, case)


def _before_views(name: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(
            ["git", "show", f"{BEFORE_VIEWS}:sinks/queries/{name}.sql"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


#: queries whose ORDER BY has since broken ties (equal strengths, rows of one instant), which the
#: engine used to order as it found them
TIES_BROKEN_SINCE = {"metric_correlation", "job_timeline"}


@pytest.mark.parametrize("name", JOB_QUERIES)
def test_each_job_query_gives_the_rows_it_gave_before_the_views(store, name: str, tmp_path: Path) -> None:
    """The library as it was typed out (commit eb63c15) and as it is now answer alike."""
    text = _before_views(name)
    if text is None:
        pytest.skip(f"no git history with {BEFORE_VIEWS} here (an sdist or a shallow clone)")
    client, _sc = store
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    old, new = parse_query_file(path), library()[name]
    assert "job_window(" not in old.sql and "job_window(" in new.sql
    for case in _cases(name):
        got, want = rows(client, new.sql, new.bind(dict(case))), rows(client, old.sql, old.bind(dict(case)))
        if name in TIES_BROKEN_SINCE:  # the old order left rows of equal keys to the engine: the same rows
            got, want = sorted(got, key=repr), sorted(want, key=repr)
        assert got == want, (name, case)
