"""Sending: threads and queues of its own for every integration, so a slow or failing receiver
never delays the others.

An integration has ``max_in_flight`` senders (default 4); a group always goes to the same one, so
its notifications go in order (a resolved message never overtakes its firing one) while other groups
go on beside it. A sender waits for its receiver's rate limit (a token bucket shared by the
integration's senders: notifications wait, none is dropped), and sends. A retryable failure is tried again after an exponential backoff with jitter (half the delay
fixed, half random, so routers that failed together do not retry together), honouring a receiver's
``Retry-After``, until ``give_up_after``; a refusal (e.g. HTTP 400), or giving up, marks the row
``failed`` and hands it to ``on_failed`` (the router dead-letters it, so it is kept). The outcome of
every row is written to the state as soon as it is known. A router that stops leaves unsent rows in
the outbox; the next one sends them.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcinsight.sinks.alerts.config import RateLimit, RetryConfig
from hpcinsight.sinks.alerts.receivers.base import Integration, RefusedError, RetryableError, exception_text
from hpcinsight.sinks.alerts.store import OutboxRow, OutboxWriter

log = logging.getLogger(__name__)


class TokenBucket:
    """``count`` sends per ``per_s`` seconds, at most ``count`` at once."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(limit.count)
        self.rate = limit.count / limit.per_s
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        """Seconds until a send is allowed (0: now, and the token is taken)."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


def backoff_s(attempt: int, retry: RetryConfig, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
    """Delay before try ``attempt + 1``: initial * 2^(attempt-1), capped, half of it jittered."""
    base = min(retry.max_backoff_s, retry.initial_backoff_s * 2 ** max(0, attempt - 1))
    delay = base / 2 + (rng or random).uniform(0, base / 2)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, retry.max_backoff_s))
    return delay


@dataclass
class SenderStats:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    retries: int = 0


class Sender(threading.Thread):
    def __init__(
        self,
        integration: Integration,
        state_path: Path,
        retry: RetryConfig,
        bucket: TokenBucket | None,
        on_failed: Callable[[OutboxRow, str], None],
    ) -> None:
        super().__init__(name=f"alerts-{integration.id}", daemon=True)
        self.integration = integration
        self.state_path = state_path
        self.retry = retry
        self.bucket = bucket
        self.on_failed = on_failed
        self.stats = SenderStats()
        self._queue: deque[OutboxRow] = deque()
        self._cond = threading.Condition()
        self._halted = threading.Event()
        self._draining = False
        self.busy = False

    def submit(self, row: OutboxRow) -> None:
        with self._cond:
            self._queue.append(row)
            self._cond.notify()

    def backlog(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self.busy else 0)

    def drain(self) -> None:
        """Send what is queued, then end."""
        with self._cond:
            self._draining = True
            self._cond.notify()

    def halt(self) -> None:
        """End as soon as possible (an HTTP request under way finishes or times out first)."""
        self._halted.set()
        with self._cond:
            self._cond.notify()

    def _next(self) -> OutboxRow | None:
        with self._cond:
            while not self._queue:
                if self._draining or self._halted.is_set():
                    return None
                self._cond.wait()
            if self._halted.is_set():
                return None
            self.busy = True
            return self._queue.popleft()

    def run(self) -> None:
        writer = OutboxWriter(self.state_path)
        try:
            while (row := self._next()) is not None:
                try:
                    self._deliver(row, writer)
                finally:
                    self.busy = False
        finally:
            writer.close()
            self.integration.close()

    def _deliver(self, row: OutboxRow, writer: OutboxWriter) -> None:
        n = row.notification()
        ident = self.integration.id
        if not n.firing and not self.integration.send_resolved:
            writer.done(row.seq, "skipped", row.attempts)
            self.stats.skipped += 1
            return
        attempts = row.attempts
        while not self._halted.is_set():
            if self.bucket is not None:
                while (wait := self.bucket.wait_s()) > 0:
                    if self._halted.wait(wait):
                        return
            attempts += 1
            try:
                self.integration.send(n)
            except RefusedError as err:
                self._fail(row, writer, attempts, f"refused: {err}")
                return
            except Exception as err:  # noqa: BLE001 - RetryableError, or any failure of a library: try again
                reason = str(err) if isinstance(err, RetryableError) else exception_text(err)
                age_s = time.time() - row.created_at / 1000
                if age_s >= self.retry.give_up_after_s:
                    self._fail(row, writer, attempts, f"gave up after {attempts} attempts over {age_s:.0f} s: {reason}")
                    return
                writer.attempt_failed(row.seq, attempts, reason)
                self.stats.retries += 1
                delay = backoff_s(attempts, self.retry, getattr(err, "retry_after_s", None))
                log.warning(
                    "%s: notification %s not delivered (attempt %d: %s); next try in %.1f s",
                    ident,
                    row.nid[:12],
                    attempts,
                    reason,
                    delay,
                )
                if self._halted.wait(delay):
                    return
                continue
            if os.environ.get("HPCINSIGHT_ALERTS_CRASH") == "after_send":
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: delivered, not yet recorded
            writer.done(row.seq, "sent", attempts)
            self.stats.sent += 1
            log.info("%s: sent %s %s", ident, row.nid[:12], row.title)
            return

    def _fail(self, row: OutboxRow, writer: OutboxWriter, attempts: int, reason: str) -> None:
        log.error("%s: notification %s dropped from delivery and dead-lettered: %s", self.integration.id, row.nid[:12], reason)
        self.on_failed(row, reason)
        writer.done(row.seq, "failed", attempts, reason)
        self.stats.failed += 1


class Dispatcher:
    """The senders of every integration, fed from the outbox."""

    def __init__(
        self,
        integrations: dict[str, tuple[list[Integration], RateLimit | None]],
        state_path: Path,
        retry: RetryConfig,
        on_failed: Callable[[OutboxRow, str], None],
    ) -> None:
        """``integrations``: id -> (one instance per sender, the receiver's rate limit)."""
        self.senders: dict[str, list[Sender]] = {}
        for ident, (instances, limit) in integrations.items():
            bucket = TokenBucket(limit) if limit else None
            self.senders[ident] = [Sender(i, state_path, retry, bucket, on_failed) for i in instances]
        for sender in self._all():
            sender.start()

    def _all(self) -> list[Sender]:
        return [s for senders in self.senders.values() for s in senders]

    def submit(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Queue ``rows`` on their senders (a group always on the same one); returns those whose
        integration is not configured."""
        unknown = []
        for row in rows:
            senders = self.senders.get(row.integration)
            if senders is None:
                unknown.append(row)
            else:
                senders[zlib.crc32(row.group_key.encode()) % len(senders)].submit(row)
        return unknown

    def backlog(self) -> int:
        return sum(s.backlog() for s in self._all())

    def close(self, grace_s: float) -> None:
        """Let the senders finish their queues for up to ``grace_s``, then stop them."""
        deadline = time.monotonic() + grace_s
        for s in self._all():
            s.drain()
        for s in self._all():
            s.join(max(0.0, deadline - time.monotonic()))
        for s in self._all():
            s.halt()
        for s in self._all():
            s.join(5.0)

    def stats(self) -> dict[str, int]:
        out = {"sent": 0, "skipped": 0, "failed": 0, "retries": 0}
        for s in self._all():
            for k in out:
                out[k] += getattr(s.stats, k)
        return out
