"""A node's message checked as the worker will decode it, before it leaves the node.

The worker refuses a record for one value its schema does not allow (a dead letter, with the
reason), so one glitching reading (a power of 4 MW, a temperature of 511 °C, a counter that
jumped) would cost every other reading of its GPU or port that tick. Each message is decoded here with the
topic's codec, as the worker does; where that fails, a number outside its field's range becomes
null (unknown, as a failed read is), a map drops such an entry, and a record that still does not
decode is left out. A message that decodes, every one but for such a glitch, goes out as encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec

from hpcinsight.schemas.catalog import Topic
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import Event

log = logging.getLogger(__name__)

#: a field's allowed range: (ge, gt, le, lt), None where open
_Range = tuple[Any, Any, Any, Any]


@dataclass
class FitStats:
    """What fitting changed: values made null (or map entries dropped), records left out."""

    values_nulled: int = 0
    records_left_out: int = 0
    #: (event, field) pairs already logged: a stuck sensor logs once, not every tick
    logged: set[tuple[str, str]] = field(default_factory=set)


@dataclass(frozen=True)
class _Rules:
    numbers: dict[str, _Range]  # optional number fields and their range
    maps: dict[str, _Range]  # maps of numbers and the range of their values
    texts: dict[str, _Range]  # optional strings and the range of their length


def fitted(topic: Topic, records: Sequence[Event], stats: FitStats) -> tuple[bytes | None, int]:
    """The message of ``records`` on ``topic`` that its codec decodes, and how many records it
    holds: as encoded when it decodes (the usual case, one decode); else with the values that
    break their range made null and the records that still do not decode left out (None when
    none is left)."""
    codec = topic.codec
    value = codec.encode(list(records))
    try:
        codec.decode(value)
        return value, len(records)
    except DecodeError as err:
        reason = str(err)
    kept = []
    for record in records:
        fixed = _within_range(record, stats)
        try:
            codec.decode(codec.encode([fixed]))
        except DecodeError as still:
            stats.records_left_out += 1
            log.warning("%s of %s left out: %s", type(record).__name__, _who(record), still)
            continue
        kept.append(fixed)
    log.debug("message fitted to its schema (was: %s)", reason)
    return (codec.encode(kept) if kept else None), len(kept)


def _within_range(record: Event, stats: FitStats) -> Event:
    rules = _rules(type(record))
    changes: dict[str, Any] = {}
    for name, bounds in rules.numbers.items():
        value = getattr(record, name)
        if value is not None and not _inside(value, bounds):
            changes[name] = None
            _note(record, name, value, stats)
    for name, bounds in rules.texts.items():
        value = getattr(record, name)
        if value is not None and not _inside(len(value), bounds):
            changes[name] = None
            _note(record, name, value if len(value) <= 40 else f"{value[:40]}... ({len(value)} characters)", stats)
    for name, bounds in rules.maps.items():
        entries = getattr(record, name)
        bad = [k for k, v in entries.items() if not _inside(v, bounds)]
        if bad:
            changes[name] = {k: v for k, v in entries.items() if k not in bad}
            for k in bad:
                _note(record, f"{name}[{k}]", entries[k], stats)
    return msgspec.structs.replace(record, **changes) if changes else record


def _inside(value: Any, bounds: _Range) -> bool:
    ge, gt, le, lt = bounds
    try:
        return (
            (ge is None or value >= ge)
            and (gt is None or value > gt)
            and (le is None or value <= le)
            and (lt is None or value < lt)
        )
    except TypeError:  # not a number at all: the codec's reason says so
        return True


def _note(record: Event, name: str, value: Any, stats: FitStats) -> None:
    stats.values_nulled += 1
    key = (type(record).__name__, name.partition("[")[0])
    if key not in stats.logged:
        stats.logged.add(key)
        log.warning(
            "%s %s of %s is %r, outside what its schema allows: sent as unknown (logged once per field)",
            type(record).__name__,
            name,
            _who(record),
            value,
        )


def _who(record: Event) -> str:
    return " ".join(
        str(getattr(record, n)) for n in ("node", "gpu_uuid", "device", "job_id") if getattr(record, n, None) is not None
    )


@cache
def _rules(event: type[Event]) -> _Rules:
    """The ranges of ``event``'s optional numbers and of its maps' values, from its schema."""
    info = msgspec.inspect.type_info(event)
    assert isinstance(info, msgspec.inspect.StructType)
    numbers: dict[str, _Range] = {}
    maps: dict[str, _Range] = {}
    texts: dict[str, _Range] = {}
    for f in info.fields:
        members = getattr(f.type, "types", (f.type,))
        optional = any(isinstance(m, msgspec.inspect.NoneType) for m in members)
        for m in members:
            if optional and isinstance(m, (msgspec.inspect.FloatType, msgspec.inspect.IntType)) and _bounded(m):
                numbers[f.name] = (m.ge, m.gt, m.le, m.lt)
            if optional and isinstance(m, msgspec.inspect.StrType) and (m.min_length or m.max_length is not None):
                texts[f.name] = (m.min_length or None, None, m.max_length, None)
            if isinstance(m, msgspec.inspect.DictType) and isinstance(m.value_type, msgspec.inspect.FloatType):
                if _bounded(m.value_type):
                    maps[f.name] = (m.value_type.ge, m.value_type.gt, m.value_type.le, m.value_type.lt)
    return _Rules(numbers, maps, texts)


def _bounded(t: msgspec.inspect.FloatType | msgspec.inspect.IntType) -> bool:
    return any(b is not None for b in (t.ge, t.gt, t.le, t.lt))
