"""The JSON wire codec: every Kafka message is a batch envelope of one event type.

Wire form::

    {"schema": "gpu_sample", "v": 1, "records": [{...}, {...}]}

One message per node per tick carries all of that node's GPUs, which keeps Kafka's
per-message overhead low while each record stays a plain, self-describing object.
Decoding validates types, ranges and finiteness; anything wrong raises
:class:`DecodeError` with a reason fit for a dead-letter record.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from schemas.events import Event

E = TypeVar("E", bound=Event)


class DecodeError(ValueError):
    """A message that cannot be used; ``str(err)`` is the reason stored with the dead letter."""


class _Header(msgspec.Struct):
    schema: str
    v: int


_header_decoder = msgspec.json.Decoder(_Header)
_encoder = msgspec.json.Encoder()


class Codec(Generic[E]):
    """Encoder and validating decoder of batches of one event type."""

    def __init__(self, event: type[E]) -> None:
        self.event = event
        envelope = msgspec.defstruct(
            f"{event.__name__}Batch",
            [("schema", str), ("v", int), ("records", list[event])],  # type: ignore[valid-type]
            frozen=True,
        )
        self._decoder = msgspec.json.Decoder(envelope)
        self._envelope = envelope

    def encode(self, records: list[E]) -> bytes:
        return _encoder.encode(self._envelope(self.event.__schema__, self.event.__version__, records))

    def decode(self, raw: bytes | None) -> list[E]:
        if not raw:
            raise DecodeError("empty message")
        try:
            header = _header_decoder.decode(raw)
        except msgspec.ValidationError as err:
            raise DecodeError(f"bad envelope: {err}") from None
        except msgspec.DecodeError as err:
            raise DecodeError(f"malformed JSON: {err}") from None
        if header.schema != self.event.__schema__:
            raise DecodeError(f"schema {header.schema!r} does not belong here; expected {self.event.__schema__!r}")
        if header.v != self.event.__version__:
            raise DecodeError(
                f"unknown schema version {header.v} of {header.schema!r}; this build reads version {self.event.__version__}"
            )
        try:
            return list(self._decoder.decode(raw).records)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise DecodeError(f"invalid {self.event.__schema__}: {err}") from None
