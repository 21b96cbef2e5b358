"""The router's state on disk (SQLite, stdlib): alerts, groups, what was sent to whom, tombstones,
silences, the job directory, the Kafka offsets consumed, and the outbox of notifications.

One transaction holds everything a batch of messages changed *and* the offsets after that batch,
and the notifications it decided to send enter the outbox in the same transaction. So a router
killed at any point restarts from a state in which every consumed message has had its whole effect
or none, and every notification it decided on is either sent (``state = 'sent'``) or waits in the
outbox to be sent; it is never decided on twice. WAL journal with ``synchronous=NORMAL``: a
committed transaction survives the process being killed; a power loss may lose the last ones, and
then both the state and the offsets go back together.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hpcinsight.schemas.events import Silence
from hpcinsight.sinks.alerts.engine import Changes, Group, SentEntry
from hpcinsight.sinks.alerts.model import Alert, JobInfo, Notification, decode_notification, encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                                    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS groups (key TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sent (group_key TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    nid TEXT NOT NULL,
    integration TEXT NOT NULL,
    group_key TEXT NOT NULL,
    title TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | skipped | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at INTEGER,
    error TEXT,
    UNIQUE (nid, integration)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, seq);
"""

_alert = msgspec.json.Decoder(Alert)
_group = msgspec.json.Decoder(Group)
_sent = msgspec.json.Decoder(SentEntry)
_silence = msgspec.json.Decoder(Silence)
_job = msgspec.json.Decoder(JobInfo)

#: sent and failed outbox rows are kept this long, for `status` and for the record
KEEP_DONE_MS = 7 * 86_400_000


class StateError(RuntimeError):
    """The state directory cannot be used (taken by another router, or from another cluster)."""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    nid: str
    integration: str
    group_key: str
    title: str
    body: bytes
    created_at: int
    attempts: int

    def notification(self) -> Notification:
        return decode_notification(self.body)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=True)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


class StateStore:
    """The main thread's handle on the state; senders use :class:`OutboxWriter`."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(state_dir / "router.lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateError(f"another alert router is running on {state_dir}") from None
        self.path = state_dir / "state.sqlite"
        self.db = connect(self.path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- identity ------------------------------------------------------------------------
    def bind(self, cluster_id: str, prefix: str, reset: bool = False) -> None:
        """Refuse state written for another Kafka cluster or topic prefix (its offsets and ids mean
        nothing here) unless ``reset``, which forgets it all."""
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if meta and (meta.get("cluster_id"), meta.get("prefix")) != (cluster_id, prefix):
            if not reset:
                raise StateError(
                    f"the state in {self.dir} belongs to Kafka cluster {meta.get('cluster_id')!r} with topic prefix "
                    f"{meta.get('prefix')!r}, not {cluster_id!r} / {prefix!r}: use another --state-dir, or --reset-state "
                    "to forget it (what was sent, open groups)"
                )
        if reset or not meta:
            with self.transaction() as db:
                for table in ("meta", "offsets", "alerts", "groups", "sent", "tombstones", "silences", "jobs", "outbox"):
                    db.execute(f"DELETE FROM {table}")
                db.executemany("INSERT INTO meta VALUES (?, ?)", [("cluster_id", cluster_id), ("prefix", prefix)])

    # -- load ----------------------------------------------------------------------------
    def offsets(self) -> dict[tuple[str, int], int]:
        return {(t, p): o for t, p, o in self.db.execute("SELECT topic, partition, next_offset FROM offsets")}

    def load(self) -> dict[str, object]:
        q = self.db.execute
        return {
            "alerts": [_alert.decode(b) for (b,) in q("SELECT body FROM alerts")],
            "groups": [_group.decode(b) for (b,) in q("SELECT body FROM groups")],
            "sent": {k: _sent.decode(b) for k, b in q("SELECT group_key, body FROM sent")},
            "tombstones": dict(q("SELECT id, at FROM tombstones").fetchall()),
            "silences": [_silence.decode(b) for (b,) in q("SELECT body FROM silences")],
            "jobs": {k: _job.decode(b) for k, b in q("SELECT job_id, body FROM jobs")},
        }

    def pending(self) -> list[OutboxRow]:
        rows = self.db.execute(
            "SELECT seq, nid, integration, group_key, title, body, created_at, attempts FROM outbox "
            "WHERE state = 'pending' ORDER BY seq"
        )
        return [OutboxRow(*r) for r in rows]

    # -- save ----------------------------------------------------------------------------
    def commit(
        self, changes: Changes, offsets: dict[tuple[str, int], int], outbox: list[tuple[Notification, str, str]]
    ) -> list[OutboxRow]:
        """Write ``changes``, the ``offsets`` reached and the ``outbox`` entries
        (notification, integration id, title) in one transaction; returns the new outbox rows."""
        new: list[OutboxRow] = []
        with self.transaction() as db:
            _upsert(db, "alerts", "id", changes.alerts)
            _upsert(db, "groups", "key", changes.groups)
            _upsert(db, "sent", "group_key", changes.sent)
            _upsert(db, "silences", "id", changes.silences)
            _upsert(db, "jobs", "job_id", changes.jobs)
            gone = [(k,) for k, v in changes.tombstones.items() if v is None]
            db.executemany("DELETE FROM tombstones WHERE id = ?", gone)
            db.executemany(
                "INSERT OR REPLACE INTO tombstones VALUES (?, ?)",
                [(k, v) for k, v in changes.tombstones.items() if v is not None],
            )
            db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", [(t, p, o) for (t, p), o in offsets.items()])
            for n, integration, title in outbox:
                body = encode(n)
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbox (nid, integration, group_key, title, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (n.id, integration, n.group_key, title, body, n.created_at),
                )
                if cur.rowcount:
                    new.append(OutboxRow(cur.lastrowid, n.id, integration, n.group_key, title, body, n.created_at, 0))
        return new

    def prune_outbox(self, now_ms: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE state != 'pending' AND done_at < ?", (now_ms - KEEP_DONE_MS,))


def _upsert(db: sqlite3.Connection, table: str, key: str, items: dict[str, object]) -> None:
    db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k, v in items.items() if v is None])
    db.executemany(
        f"INSERT OR REPLACE INTO {table} ({key}, body) VALUES (?, ?)", [(k, encode(v)) for k, v in items.items() if v is not None]
    )


class OutboxWriter:
    """A sender thread's own connection: records each attempt and its outcome at once."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)

    def done(self, seq: int, state: str, attempts: int, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE outbox SET state = ?, attempts = ?, done_at = ?, error = ? WHERE seq = ?",
            (state, attempts, int(time.time() * 1000), error, seq),
        )

    def attempt_failed(self, seq: int, attempts: int, error: str) -> None:
        self.db.execute("UPDATE outbox SET attempts = ?, error = ? WHERE seq = ?", (attempts, error, seq))

    def close(self) -> None:
        self.db.close()


def read_outbox(state_dir: Path, states: tuple[str, ...] = ("sent",)) -> list[dict[str, object]]:
    """The outbox rows in ``states``, oldest first, read-only (safe while a router runs)."""
    path = state_dir / "state.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        marks = ",".join("?" * len(states))
        rows = db.execute(
            f"SELECT seq, nid, integration, group_key, title, created_at, state, attempts, done_at, error "
            f"FROM outbox WHERE state IN ({marks}) ORDER BY seq",
            states,
        ).fetchall()
    finally:
        db.close()
    keys = ("seq", "nid", "integration", "group_key", "title", "created_at", "state", "attempts", "done_at", "error")
    return [dict(zip(keys, r)) for r in rows]


def summary(state_dir: Path) -> dict[str, int]:
    """Counts of the state, read-only: open groups, firing alerts, outbox rows by state."""
    path = state_dir / "state.sqlite"
    out = {"groups": 0, "alerts": 0, "pending": 0, "sent": 0, "skipped": 0, "failed": 0}
    if not path.exists():
        return out
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        out["groups"] = db.execute("SELECT count() FROM groups").fetchone()[0]
        out["alerts"] = db.execute("SELECT count() FROM alerts").fetchone()[0]
        for state, n in db.execute("SELECT state, count() FROM outbox GROUP BY state"):
            out[state] = n
    except sqlite3.OperationalError:
        pass  # not initialised yet
    finally:
        db.close()
    return out


def default_state_dir(data_dir: Path) -> Path:
    return data_dir / "alerts"
