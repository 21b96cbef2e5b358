"""The jobs as they actually ran ("as recorded"): the baseline row beside the what-if runs.

Waits are ``start - submit`` as recorded; a job holds its requested GPUs from its recorded
start to its end, as the live scheduling KPIs count them (a share counts as its fraction).
Placement-dependent measures (stranded GPUs, fragmentation, zones) need the recorded nodes and
are left empty here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from hpcinsight.whatif.events import requests_from
from hpcinsight.whatif.indicators import gpu_bucket, job_class, quantiles, shares, waits_by
from hpcinsight.whatif.model import Job, Node


def as_recorded(nodes: Sequence[Node], jobs: Sequence[Job]) -> tuple[dict, list[tuple[float, float]]]:
    reqs = requests_from(jobs)
    total_gpus = sum(n.gpus for n in nodes) or 1
    horizon = max(
        [r.submit for r in reqs] + [r.withdraw_at or 0 for r in reqs] + [max((t.end or 0) for t in r.tasks) for r in reqs] + [0.0]
    )
    t0 = min((r.submit for r in reqs), default=0.0)
    deltas: list[tuple[float, float]] = []
    waits = []
    team_h: dict[str, float] = defaultdict(float)
    user_h: dict[str, float] = defaultdict(float)
    all_h = low_small = 0.0
    placed = never = 0
    for r in reqs:
        starts = [t.start for t in r.tasks if t.start is not None]
        if not starts:
            never += 1
            continue
        placed += 1
        start = max(starts) if r.gang else starts[0]
        end = max((t.end for t in r.tasks if t.end is not None), default=horizon)
        deltas += [(start, r.gpus), (end, -r.gpus)]
        groups = {
            "cluster": "all",
            "gpu_bucket": gpu_bucket(r.gpus),
            "job_class": job_class(r.gpus),
            "qos": r.qos or "unknown",
            "priority": r.priority or "unknown",
            "gang": "gang" if r.gang else "single",
        }
        waits.append((groups, start - r.submit))
        hours = r.gpus * (end - start) / 3600
        team_h[r.team] += hours
        user_h[r.user] += hours
        all_h += hours
        if r.priority == "low" and r.gpus <= 1:
            low_small += hours
    deltas.sort()
    series, area, level, last = [], 0.0, 0.0, t0
    for t, d in deltas:
        area += level * (t - last)
        level += d
        last = t
        series.append((t, 100 * level / total_gpus))
    area += level * (horizon - last)
    span = (horizon - t0) or 1.0
    return {
        "policy": "as recorded",
        "queue": "-",
        "gang": "-",
        "reserve_gpus": 0,
        "seed": None,
        "requests": len(reqs),
        "placed": placed,
        "never_placed": never,
        "unschedulable": 0,
        "withdrawn_waiting": never,
        "still_waiting": 0,
        "horizon_s": horizon,
        "gpu_alloc_pct": round(100 * area / span / total_gpus, 2),
        "unallocated_gpus": round(total_gpus - area / span, 1),
        "stranded_gpus": None,
        "frag_rate_pct": None,
        "wait_s": quantiles(w for _, w in waits),
        "wait_by": waits_by(waits),
        "gpu_hours": round(all_h, 1),
        "gpu_hours_by_team": shares(team_h, 1),
        "gpu_hours_by_user": shares(user_h, 1),
        "zone_util_pct": {},
        "low_priority_small_share_pct": round(100 * low_small / all_h, 2) if all_h else 0.0,
        "gang_deadlocks": 0,
        "gang_evictions": 0,
        "gang_held_idle_gpu_hours": 0.0,
        "reservations": 0,
        "_waits": [(g["gpu_bucket"], w) for g, w in waits],
    }, series
