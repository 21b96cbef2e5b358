"""A bounded, append-only on-disk queue of Kafka messages: the agent's write-ahead log.

Every message an agent produces is appended here first (a local file write, never a network
call), and a sender thread ships records from here in order. While the broker is
unreachable the records simply accumulate on disk; when it returns they drain in the order
they were taken. Only when the byte bound is hit are the oldest segments dropped, and every
dropped record is counted. The position of the first record the broker has not yet
acknowledged is kept in ``cursor``, so an agent restart resends what might not have
arrived (the tables downstream collapse the rare replay on their natural keys).

Record layout: ``>II`` header (payload length, CRC32 of payload), then the payload
``>HH`` (topic length, key length) + topic + key + value. A torn or corrupt tail (crash in
the middle of a write) is detected by length/CRC and skipped.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct(">II")
_LENGTHS = struct.Struct(">HH")
_CURSOR = struct.Struct(">QQ")


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    end: Position  # position just after this record


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20) -> None:
        if max_bytes < 2 * segment_bytes:
            segment_bytes = max(4096, max_bytes // 4)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        segments = self._segments()
        self._sizes = {seg: self._path(seg).stat().st_size for seg in segments}
        self._write_seg = segments[-1] if segments else 0
        self._sizes.setdefault(self._write_seg, 0)
        self._truncate_torn_tail()
        self._writer = open(self._path(self._write_seg), "ab")
        self.acked = self._load_cursor(segments)
        self._read = self.acked

    # -- files -------------------------------------------------------------------------
    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:012d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg"))

    def _truncate_torn_tail(self) -> None:
        """Cut a record half-written by a crash, so that new records follow the last good one."""
        path = self._path(self._write_seg)
        if not path.exists():
            return
        end = 0
        for record in self._scan(self._write_seg, 0):
            end = record.end.offset
        if end < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(end)
            self._sizes[self._write_seg] = end

    def _load_cursor(self, segments: list[int]) -> Position:
        try:
            seg, off = _CURSOR.unpack((self.dir / "cursor").read_bytes())
            position = Position(seg, off)
        except (OSError, struct.error):
            position = Position(segments[0] if segments else 0, 0)
        if segments and position.segment < segments[0]:
            position = Position(segments[0], 0)
        return position

    def _save_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_bytes(_CURSOR.pack(self.acked.segment, self.acked.offset))
        os.replace(tmp, self.dir / "cursor")

    # -- writing -----------------------------------------------------------------------
    def append(self, topic: str, key: bytes, value: bytes) -> None:
        t = topic.encode()
        payload = _LENGTHS.pack(len(t), len(key)) + t + key + value
        data = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._writer.tell() + len(data) > self.segment_bytes and self._writer.tell() > 0:
                self._writer.close()
                self._write_seg += 1
                self._writer = open(self._path(self._write_seg), "ab")
                self._sizes[self._write_seg] = 0
            self._writer.write(data)
            self._sizes[self._write_seg] += len(data)
            self._writer.flush()  # in the OS page cache: survives a crash of the agent
            self._enforce_bound()

    def _enforce_bound(self) -> None:
        while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
            oldest = min(self._sizes)
            start = self._read.offset if self._read.segment == oldest else 0
            if self._read.segment <= oldest:
                self.dropped += sum(1 for _ in self._scan(oldest, start))
            self._path(oldest).unlink(missing_ok=True)
            del self._sizes[oldest]
            first = Position(min(self._sizes), 0)
            self._read = max(self._read, first)
            self.acked = max(self.acked, first)

    # -- reading -----------------------------------------------------------------------
    def _scan(self, segment: int, offset: int):
        try:
            with open(self._path(segment), "rb") as f:
                f.seek(offset)
                while True:
                    header = f.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        return
                    length, crc = _HEADER.unpack(header)
                    payload = f.read(length)
                    if len(payload) < length or zlib.crc32(payload) != crc:
                        return  # torn tail
                    offset += _HEADER.size + length
                    tlen, klen = _LENGTHS.unpack_from(payload)
                    start = _LENGTHS.size
                    topic = payload[start : start + tlen].decode()
                    key = payload[start + tlen : start + tlen + klen]
                    yield Record(topic, key, payload[start + tlen + klen :], Position(segment, offset))
        except FileNotFoundError:
            return

    def read(self, limit: int) -> list[Record]:
        """Up to ``limit`` records after the last one read, in order."""
        with self._lock:
            out: list[Record] = []
            while len(out) < limit:
                batch = []
                for record in self._scan(self._read.segment, self._read.offset):
                    batch.append(record)
                    if len(out) + len(batch) >= limit:
                        break
                out.extend(batch)
                if batch:
                    self._read = batch[-1].end
                if len(out) >= limit:
                    break
                if self._read.segment < self._write_seg:  # segment exhausted: move on
                    self._read = Position(self._read.segment + 1, 0)
                    continue
                break
            return out

    def ack(self, position: Position) -> None:
        """Everything before ``position`` is safely in Kafka; fully acked segments are removed."""
        with self._lock:
            if position <= self.acked:
                return
            self.acked = position
            self._save_cursor()
            for segment in [s for s in self._sizes if s < position.segment and s != self._write_seg]:
                self._path(segment).unlink(missing_ok=True)
                del self._sizes[segment]

    def rewind(self) -> None:
        """Read again from the first unacknowledged record (after a delivery failure)."""
        with self._lock:
            self._read = self.acked

    def backlog_bytes(self) -> int:
        with self._lock:
            total = 0
            for segment, size in self._sizes.items():
                if segment == self.acked.segment:
                    size -= self.acked.offset
                if segment >= self.acked.segment:
                    total += size
            return total

    def close(self) -> None:
        with self._lock:
            self._writer.close()
            self._save_cursor()
