"""Placement policies by name, each a score over feasible nodes behind one interface.

``profile`` composes with any of them (``mostallocated+profile``): hosts are typed by resource
profile and a job runs only on a host of its own profile (see :mod:`hpcinsight.whatif.profiles`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpcinsight.whatif.model import Job, WhatifError
from hpcinsight.whatif.policies.base import Policy, normalize_scores
from hpcinsight.whatif.policies.fgd import FgdPolicy
from hpcinsight.whatif.policies.fit import BestFitPolicy, LeastAllocatedPolicy, MostAllocatedPolicy
from hpcinsight.whatif.policies.gpu import DotProductPolicy, GpuClusteringPolicy, GpuPackingPolicy
from hpcinsight.whatif.policies.simple import FirstFitPolicy, RandomPolicy
from hpcinsight.whatif.typical import typical_shapes

POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        RandomPolicy,
        FirstFitPolicy,
        BestFitPolicy,
        MostAllocatedPolicy,
        LeastAllocatedPolicy,
        DotProductPolicy,
        GpuPackingPolicy,
        GpuClusteringPolicy,
        FgdPolicy,
    )
}
ANCHOR_POLICIES = ("random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd")
PROFILE_SUFFIX = "+profile"

__all__ = ["ANCHOR_POLICIES", "POLICIES", "Policy", "make_policy", "normalize_scores", "parse_policies"]


def parse_policies(text: str) -> list[str]:
    """``a,b,c`` into names, refusing an unknown one with the list of known ones."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise WhatifError("--policy: give at least one policy")
    for name in names:
        base = name.removesuffix(PROFILE_SUFFIX)
        if base not in POLICIES:
            known = ", ".join(POLICIES)
            raise WhatifError(f"unknown policy {name!r} (known: {known}; add {PROFILE_SUFFIX} to type hosts by profile)")
    return names


def make_policy(name: str, jobs: Sequence[Job], rng: np.random.Generator) -> Policy:
    """A fresh policy instance for one run (FGD learns its typical shapes from ``jobs``)."""
    base = name.removesuffix(PROFILE_SUFFIX)
    cls = POLICIES[base]
    if cls is RandomPolicy:
        return RandomPolicy(rng)
    if cls is FgdPolicy:
        return FgdPolicy(typical_shapes(jobs))
    return cls()
