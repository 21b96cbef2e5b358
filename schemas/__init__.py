"""Schemas and the topic catalog: the one place where agents, streams and sinks meet."""

from hpcinsight.schemas.codec import Codec, DecodeError
from hpcinsight.schemas.events import Anomaly, DeadLetter, Event, GpuQuantiles, GpuSample

__all__ = ["Anomaly", "Codec", "DeadLetter", "DecodeError", "Event", "GpuQuantiles", "GpuSample"]
