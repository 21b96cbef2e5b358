"""A sink started while ClickHouse refuses (its disk full, a server away) waits for it instead of
exiting (chaos finding: a sink restarted while the store's disk was full exited with
NOT_ENOUGH_SPACE); a schema that drifted from the build is still a configuration error."""

from __future__ import annotations

import threading

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from hpcinsight.sinks.clickhouse import while_store_refuses
from hpcinsight.sinks.migrations import SchemaDriftError


def test_the_sink_waits_while_the_store_refuses_at_start() -> None:
    tries = []

    def migrate() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)")
        return "migrated"

    assert while_store_refuses(migrate, threading.Event()) == "migrated" and len(tries) == 3


def test_a_drifted_schema_or_a_stop_ends_the_wait() -> None:
    def drifted() -> None:
        raise SchemaDriftError("gpu_samples: column x missing")

    with pytest.raises(SchemaDriftError):
        while_store_refuses(drifted, threading.Event())
    stop = threading.Event()
    stop.set()
    with pytest.raises(OSError):
        while_store_refuses(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")), stop)
