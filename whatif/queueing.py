"""Queue disciplines: the order in which waiting jobs are offered to the placement policy.

* ``fifo``: by submit time (Kubernetes' default queue: every waiting job is tried in that order,
  and one that does not fit does not block the ones behind it);
* ``random``: the waiting pool NSML replaced: a fresh random order at every scheduling pass;
* ``priority``: highest priority first, with

      priority = w_urgent * urgent + w_size * gpus + w_wait * hours_waited + w_qos * qos_level

  ``gpus`` is the job's GPU request (a share counts as its fraction; a gang its total),
  ``qos_level`` is 2 for latency-sensitive/guaranteed, 1 for burstable, 0 for best-effort, and
  ``urgent`` is 1 for jobs whose priority label is ``urgent``. Defaults: ``size=1``, ``wait=1``,
  ``qos=0``, ``urgent=1000000`` (urgent jobs go first whatever else holds). The weights can
  change mid-run (``size=1,wait=1;@86400:wait=4``: from trace second 86,400 waiting counts
  four times as much), as the talk's operators changed priorities at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hpcinsight.whatif.model import WhatifError

QUEUES = ("fifo", "random", "priority")
QOS_LEVEL = {"LS": 2, "Guaranteed": 2, "Burstable": 1, "BE": 0}


@dataclass(frozen=True)
class Weights:
    size: float = 1.0
    wait: float = 1.0
    qos: float = 0.0
    urgent: float = 1_000_000.0


@dataclass(frozen=True)
class WeightSchedule:
    """Weights in force from each time on (the first entry from the start)."""

    steps: tuple[tuple[float, Weights], ...] = field(default_factory=lambda: ((0.0, Weights()),))

    def at(self, t: float) -> Weights:
        current = self.steps[0][1]
        for start, w in self.steps:
            if t >= start:
                current = w
        return current


def parse_weights(text: str | None) -> WeightSchedule:
    """``size=1,wait=2`` or ``size=1;@86400:wait=4`` (later entries change only what they name)."""
    if not text:
        return WeightSchedule()
    steps: list[tuple[float, Weights]] = []
    current = Weights()
    for i, part in enumerate(p.strip() for p in text.split(";")):
        start = 0.0
        if part.startswith("@"):
            head, _, part = part[1:].partition(":")
            try:
                start = float(head)
            except ValueError:
                raise WhatifError(f"--weights: bad change time {head!r} (expected @SECONDS:k=v,...)") from None
        elif i > 0:
            raise WhatifError("--weights: a later entry needs a time: @SECONDS:k=v,...")
        changes: dict[str, float] = {}
        for kv in (x.strip() for x in part.split(",") if x.strip()):
            key, sep, value = kv.partition("=")
            if not sep or key not in Weights.__dataclass_fields__:
                raise WhatifError(f"--weights: expected size=, wait=, qos=, urgent=, got {kv!r}")
            try:
                changes[key] = float(value)
            except ValueError:
                raise WhatifError(f"--weights: {key} must be a number, got {value!r}") from None
        current = replace(current, **changes)
        steps.append((start, current))
    steps.sort(key=lambda s: s[0])
    if steps[0][0] > 0:
        steps.insert(0, (0.0, Weights()))
    return WeightSchedule(tuple(steps))


def parse_queues(text: str) -> list[str]:
    names = [q.strip().lower() for q in text.split(",") if q.strip()]
    for q in names:
        if q not in QUEUES:
            raise WhatifError(f"unknown queue {q!r} (known: {', '.join(QUEUES)})")
    return names or ["fifo"]


def priority(gpus: float, waited_s: float, qos: str, urgent: bool, w: Weights) -> float:
    return w.urgent * urgent + w.size * gpus + w.wait * waited_s / 3600.0 + w.qos * QOS_LEVEL.get(qos, 0)


def order(kind: str, reqs: list, t: float, weights: WeightSchedule, rng: np.random.Generator) -> list:
    """The waiting requests in the order the discipline offers them."""
    if kind == "fifo":
        return sorted(reqs, key=lambda r: (r.submit, r.seq))
    if kind == "random":
        return [reqs[i] for i in rng.permutation(len(reqs))]
    w = weights.at(t)
    return sorted(reqs, key=lambda r: (-priority(r.gpus, t - r.submit, r.qos, r.urgent, w), r.submit, r.seq))
