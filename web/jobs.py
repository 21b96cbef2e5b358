"""A job's page in one call: its live GPUs and quantiles, and from the store its history and
``diagnose``'s findings.

The live part answers without the store; a store that is away or refuses is said in ``store_error``
instead of failing the request. Nothing known anywhere is a 404.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from hpcinsight.web.deps import LABEL, Services, authorised, json_safe, services

router = APIRouter(dependencies=[Depends(authorised)])


@router.get(
    "/api/jobs/{job}",
    summary="a job: GPUs, quantiles since start with its threshold, open anomalies (live); heat strip, "
    "step time per rank, timeline and diagnose findings (store)",
)
def job_detail(job: str, store_data: bool = Query(True, alias="store"), svc: Services = Depends(services)) -> dict[str, Any]:
    if re.fullmatch(LABEL, job) is None:
        raise HTTPException(400, "job: not a job id (1-128 letters, digits or ._:@/+=-)")
    live = svc.state.job_view(job) or {"job": job, "gpus": [], "quantiles": [], "open_anomalies": []}
    user = next((g["user"] for g in live["gpus"] if g["user"]), None)
    team = next((g["team"] for g in live["gpus"] if g["team"]), None)
    live["threshold_pct"] = svc.job_threshold(team, user) if svc.job_threshold else None
    if store_data:
        try:
            live["store"] = svc.store.run(lambda client: job_from_store(client, job))
        except HTTPException as err:
            live["store_error"] = err.detail
        except ValueError as err:
            live["store_error"] = str(err)
    if not live["gpus"] and not live["quantiles"] and not live.get("store"):
        raise HTTPException(
            404, f"nothing is known about this job{': ' + live['store_error'] if live.get('store_error') else ''}"
        )
    safe: dict[str, Any] = json_safe(live)
    return safe


def job_from_store(client: Any, job: str) -> dict[str, Any]:
    """The job's history from the query library, and diagnose's findings."""
    from dataclasses import asdict

    from hpcinsight.sinks.diagnose import build_report
    from hpcinsight.sinks.query import records

    out: dict[str, Any] = {
        "heat_strip": records(client, "job_gpu_timeline", {"job": job}),
        "ranks": records(client, "straggler_timeline", {"job": job}),
    }
    try:
        report = build_report(client, job)
    except ValueError as err:
        out["diagnose_error"] = str(err)
        return out
    out.update(
        summary=report.summary, findings=[asdict(f) for f in report.findings], timeline=report.timeline, bucket_s=report.bucket_s
    )
    return out
