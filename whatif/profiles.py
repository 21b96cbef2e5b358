"""Resource-type profiles: hosts typed by what they are for, jobs only on hosts of their type.

NSML's answer to preprocessing jobs stranding a GPU host's GPUs. The default typing: a host
without GPUs is a ``cpu`` host, a host with GPUs a ``gpu`` host; a job asking no GPU is a
``cpu`` job, any other a ``gpu`` job. A policy named ``NAME+profile`` adds this filter to
``NAME`` (``mostallocated+profile`` is the talk's combination).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hpcinsight.whatif.state import ClusterState, Shape

SUFFIX = "+profile"


def host_profiles(state: ClusterState) -> np.ndarray:
    return np.where(state.ngpu > 0, "gpu", "cpu")


def job_profile(shape: Shape) -> str:
    return "gpu" if shape.wants_gpu else "cpu"


def profile_filter(policy: str, state: ClusterState) -> Callable[[Shape], np.ndarray] | None:
    """The extra filter a ``+profile`` policy needs, or None."""
    if not policy.endswith(SUFFIX):
        return None
    hosts = host_profiles(state)
    masks: dict[str, np.ndarray] = {p: hosts == p for p in ("cpu", "gpu")}
    return lambda shape: masks[job_profile(shape)]
