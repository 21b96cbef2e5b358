"""While the sink owns the embedded store, readers reach it through the sink, read-only."""

from __future__ import annotations

import time

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from hpcinsight.core.settings import load
from hpcinsight.sinks.clickhouse import StoreBusyError, connect
from hpcinsight.sinks.store_share import read_owner
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]


def test_readers_go_through_the_owner_and_cannot_write(pipeline: Pipeline) -> None:
    sink = pipeline.start("sink", "sink")
    try:
        deadline = time.monotonic() + 60
        while (owner := read_owner(pipeline.store)) is None:
            assert sink.poll() is None and time.monotonic() < deadline, pipeline.log("sink")
            time.sleep(0.2)
        settings = load(pipeline.env).clickhouse

        reader = connect(settings)  # the one query code path: a clickhouse-connect Client
        assert reader.query(
            "SELECT count() FROM gpu_samples WHERE node = {n:String}", parameters={"n": "x' OR 1=1"}
        ).result_rows == [(0,)]
        assert {r[0] for r in reader.query("SHOW TABLES").result_rows} >= {"gpu_samples", "anomalies", "dead_letters"}
        for statement in (
            "DROP TABLE gpu_samples",
            "INSERT INTO gpu_samples (node) VALUES ('x')",
            "SELECT 1; DROP TABLE anomalies",
        ):
            with pytest.raises(ClickHouseError):
                reader.command(statement)
        assert reader.query("SELECT count() FROM system.tables WHERE name = 'gpu_samples'").result_rows == [(1,)]

        # parameters arrive as given, escaped once (a job id with a quote or backslash must match)
        for value in ("a'b", "a\\b", "tab\there", "new\nline", "\\N", "plain"):
            got = reader.query("SELECT {j:String} AS v, length(v)", parameters={"j": value}).result_rows
            assert got == [(value, len(value.encode()))], (value, got)
        # the port itself refuses what readonly=1 lets through in the embedded engine
        outfile = pipeline.store.parent / "written-through-share.tsv"
        for statement in (
            f"SELECT 1 INTO OUTFILE '{outfile}'",
            f"SELECT 1 INTO /* c */ OUTFILE '{outfile}' FORMAT TSV",
            "SELECT 1; SELECT 2",
            "SELECT 1; DROP TABLE anomalies",
            "/* x */ DROP TABLE gpu_samples",
        ):
            with pytest.raises(ClickHouseError, match="read-only"):
                reader.raw_query(statement)
        assert not outfile.exists()
        raw = reader.raw_query("SELECT 'a;b INTO OUTFILE' -- a comment; not a statement", fmt="TabSeparated")
        assert raw == b"a;b INTO OUTFILE\n"

        with pytest.raises(ClickHouseError):  # a wrong token is refused
            clickhouse_connect.get_client(host="127.0.0.1", port=owner.port, username="default", password="guess")
        with pytest.raises(StoreBusyError):  # a second writer is refused
            connect(settings, writer=True)
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
    assert read_owner(pipeline.store) is None  # the owner file goes with the owner
