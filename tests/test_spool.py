"""The on-disk spool keeps order, survives restarts, bounds its size and counts every drop."""

from __future__ import annotations

from pathlib import Path

from hpcinsight.agents.spool import Spool


def fill(spool: Spool, n: int, start: int = 0, size: int = 100) -> None:
    for i in range(start, start + n):
        spool.append("topic", f"k{i % 3}".encode(), f"{i:08d}".encode() + b"x" * size)


def values(records) -> list[int]:
    return [int(r.value[:8]) for r in records]


def test_order_and_ack(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    fill(spool, 200)
    first = spool.read(150)
    assert values(first) == list(range(150))
    assert first[0].topic == "topic" and first[0].key == b"k0"
    assert values(spool.read(1000)) == list(range(150, 200))
    spool.ack(first[-1].end)
    assert spool.backlog_bytes() > 0
    assert len(list(tmp_path.glob("*.seg"))) < 7  # fully acked segments are gone


def test_restart_resends_exactly_what_was_not_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    fill(spool, 100)
    records = spool.read(100)
    spool.ack(records[59].end)
    spool.close()
    again = Spool(tmp_path, segment_bytes=4096)
    fill(again, 10, start=100)
    assert values(again.read(1000)) == list(range(60, 110))


def test_rewind_rereads_from_the_first_unacknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fill(spool, 10)
    records = spool.read(10)
    spool.ack(records[3].end)
    spool.rewind()
    assert values(spool.read(100)) == list(range(4, 10))


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024)
    fill(spool, 2000)  # about 250 KB
    remaining = values(spool.read(10_000))
    assert spool.dropped + len(remaining) == 2000
    assert spool.dropped > 0 and remaining == list(range(spool.dropped, 2000))  # the newest survive, in order
    assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) <= 64 * 1024 + 8 * 1024


def test_torn_tail_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fill(spool, 5)
    spool.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage")  # a crash in the middle of a write
    reopened = Spool(tmp_path)
    fill(reopened, 3, start=5)  # records after the cut are readable again
    assert values(reopened.read(100)) == list(range(8))
