"""Silences through Kafka: ``hpcinsight silence add|list|expire`` write and read the compacted
``alerts.silences`` topic, which every router follows, wherever it runs.

A silence is a :class:`hpcinsight.schemas.events.Silence` keyed by its id; the latest record of an id is its
state. Expiring one writes it again with ``ends_at`` set to now.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import KafkaException

from hpcinsight.core.kafka import new_producer, read_to_end
from hpcinsight.schemas.catalog import ALERT_SILENCES
from hpcinsight.schemas.events import Silence
from hpcinsight.sinks.alerts.matchers import Matcher
from hpcinsight.sinks.alerts.model import LABELS


def parse_matchers(texts: list[str]) -> list[str]:
    """Check matchers given on the command line; returns them in canonical form."""
    if not texts:
        raise ValueError("a silence needs at least one --match, e.g. --match kind=gpu_xid --match node=n1")
    out = []
    for text in texts:
        m = Matcher.parse(text)
        if m.name not in LABELS:
            raise ValueError(f"--match {text!r}: unknown label {m.name!r}; alerts carry: {', '.join(LABELS)}")
        out.append(str(m))
    return out


def state(s: Silence, now_ms: int) -> str:
    if now_ms >= s.ends_at:
        return "expired"
    return "active" if now_ms >= s.starts_at else "pending"


def _produce(client_config: dict[str, Any], prefix: str, silence: Silence) -> None:
    producer = new_producer(client_config)
    errors: list[str] = []
    producer.produce(
        ALERT_SILENCES.full_name(prefix),
        key=silence.id.encode(),
        value=ALERT_SILENCES.codec.encode([silence]),
        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
    )
    if producer.flush(30) or errors:
        raise KafkaException(f"the silence was not written to Kafka: {'; '.join(errors) or 'timed out'}")


def add(
    client_config: dict[str, Any],
    prefix: str,
    matchers: list[str],
    duration_s: float,
    comment: str,
    author: str,
    starts_in_s: float = 0.0,
    now_ms: int | None = None,
) -> Silence:
    if duration_s <= 0:
        raise ValueError("--duration must be longer than 0")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    starts = now_ms + int(starts_in_s * 1000)
    silence = Silence(
        id=uuid.uuid4().hex[:12],
        ts=now_ms,
        matchers=parse_matchers(matchers),
        starts_at=starts,
        ends_at=starts + int(duration_s * 1000),
        created_by=author or "unknown",
        comment=comment,
    )
    _produce(client_config, prefix, silence)
    return silence


def read_all(client_config: dict[str, Any], prefix: str, timeout: float = 30.0) -> dict[str, Silence]:
    """The current state of every silence: the topic read from its start to its end."""
    current: dict[str, Silence] = {}
    for msg in read_to_end(client_config, ALERT_SILENCES.full_name(prefix), f"{prefix}silence-cli", timeout=timeout):
        try:
            records = ALERT_SILENCES.codec.decode(msg.value())
        except ValueError:
            continue  # the router dead-letters it; a listing skips it
        for s in records:
            if s.id not in current or current[s.id].ts <= s.ts:
                current[s.id] = s
    return current


def expire(client_config: dict[str, Any], prefix: str, silence_id: str, now_ms: int | None = None) -> Silence:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    current = read_all(client_config, prefix)
    matches = [s for sid, s in current.items() if sid == silence_id or (len(silence_id) >= 4 and sid.startswith(silence_id))]
    if len(matches) != 1:
        raise ValueError(f"no silence {silence_id!r}" if not matches else f"{silence_id!r} is the start of several silence ids")
    s = matches[0]
    if state(s, now_ms) == "expired":
        raise ValueError(f"silence {s.id} has already expired")
    expired = Silence(
        id=s.id,
        ts=max(now_ms, s.ts + 1),
        matchers=s.matchers,
        starts_at=min(s.starts_at, now_ms),
        ends_at=now_ms,
        created_by=s.created_by,
        comment=s.comment,
    )
    _produce(client_config, prefix, expired)
    return expired
