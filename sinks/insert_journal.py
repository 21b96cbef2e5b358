"""The sink's note of each insert into a table that feeds views, written before the insert.

ClickHouse writes an insert's block to its table first and then to each materialized view fed
from it, each its own part. A sink killed in between (with the embedded store, a kill of the sink
is a kill of the store) leaves the block in ``gpu_samples`` and not in the rollups; the restarted
sink resumes after the highest offset stored, so the rollups never get it (found by the chaos
campaign: one batch of 1,024 samples missing from ``gpu_rollup_1m``). The same block inserted
again with the same deduplication token is skipped where it landed and written where it did not,
views included. So before such an insert the sink notes its token and the Kafka offsets it read,
and on taking a partition re-does the last insert noted for it if Kafka has not committed past
it: an insert that had finished is skipped whole by ClickHouse, one cut short is completed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcinsight.sinks.storage import Layout, quote

JOURNAL_TABLE = "hpcinsight_sink_journal"


@dataclass(frozen=True)
class NotedInsert:
    """One insert as noted: its token, and per partition the first and last offset it read."""

    topic: str
    token: str
    spans: tuple[tuple[int, int, int], ...]  # (partition, first offset, last offset)

    def last(self, partition: int) -> int | None:
        return next((last for p, _, last in self.spans if p == partition), None)


def journal_ddl(layout: Layout) -> list[str]:
    """One row per (topic, partition): the newest insert that read it (the last inserted row
    replaces the others on merge; readers use FINAL). Shared by every shard, like the migrations."""
    engine = layout.engine("ReplacingMergeTree", shared_by_all_shards=True)
    return [
        f"CREATE TABLE IF NOT EXISTS {quote(JOURNAL_TABLE)}{layout.on_cluster} (\n"
        "  topic String, partition UInt32, token String,\n"
        "  partitions Array(UInt32), firsts Array(UInt64), lasts Array(UInt64),\n"
        "  noted_at DateTime64(3, 'UTC') DEFAULT now64(3)\n"
        f") ENGINE = {engine} ORDER BY (topic, partition){layout.settings()}"
    ]


def note(client: Any, insert: NotedInsert) -> None:
    """Record ``insert`` for each partition it read; call before inserting (retry on failure)."""
    partitions = [p for p, _, _ in insert.spans]
    firsts = [first for _, first, _ in insert.spans]
    lasts = [last for _, _, last in insert.spans]
    rows = [[insert.topic, p, insert.token, partitions, firsts, lasts] for p in partitions]
    client.insert(
        JOURNAL_TABLE,
        rows,
        column_names=["topic", "partition", "token", "partitions", "firsts", "lasts"],
        settings={"insert_deduplication_token": "journal/" + insert.token},
    )


def unfinished(client: Any, topic: str, committed: dict[int, int]) -> list[NotedInsert]:
    """The inserts to do again before consuming ``topic``'s partitions from ``committed`` (the
    next offset Kafka would give each, negative for none): the last insert noted for a partition,
    where its last offset there is not below the committed one. Oldest first."""
    if not committed:
        return []
    result = client.query(
        f"SELECT partition, token, partitions, firsts, lasts, noted_at FROM {quote(JOURNAL_TABLE)} FINAL "
        "WHERE topic = {t:String} AND partition IN {ps:Array(UInt32)} ORDER BY noted_at",
        parameters={"t": topic, "ps": sorted(committed)},
    )
    found: dict[str, NotedInsert] = {}
    for partition, token, partitions, firsts, lasts, _ in result.result_rows:
        insert = NotedInsert(topic, token, tuple(zip(partitions, firsts, lasts, strict=True)))
        last = insert.last(partition)
        if last is not None and last >= committed[partition]:
            found.setdefault(token, insert)
    return list(found.values())
