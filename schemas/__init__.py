"""Schemas and the topic catalog: the one place where agents, streams and sinks meet."""

from schemas.codec import Codec, DecodeError
from schemas.events import Anomaly, DeadLetter, Event, GpuQuantiles, GpuSample

__all__ = ["Anomaly", "Codec", "DeadLetter", "DecodeError", "Event", "GpuQuantiles", "GpuSample"]
