"""The live state as REST: the cluster, GPUs, nodes, open anomalies and KPIs, as the topics left them.

Everything here reads :class:`~hpcinsight.web.state.ClusterState` (fed by the topics), never the
store, so it answers while the store is away. Filters are labels checked against :data:`LABEL`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from hpcinsight.web.deps import LABEL, Services, authorised, services
from hpcinsight.web.state import Filter

router = APIRouter(dependencies=[Depends(authorised)])


@router.get("/api/cluster", summary="cluster status: GPUs, allocation, utilisation, open anomalies, cluster KPIs")
def cluster(svc: Services = Depends(services)) -> dict[str, Any]:
    out = svc.state.summary()
    if svc.feed_status is not None:
        out["feed"] = svc.feed_status()
    return out


@router.get("/api/gpus", summary="every GPU's current values, filtered")
def gpus(
    team: str | None = Query(None, pattern=LABEL),
    user: str | None = Query(None, pattern=LABEL),
    job: str | None = Query(None, pattern=LABEL),
    model: str | None = Query(None, pattern=LABEL),
    kind: str | None = Query(None, pattern=LABEL),
    node: str | None = Query(None, pattern=LABEL),
    zone: str | None = Query(None, pattern=LABEL),
    svc: Services = Depends(services),
) -> list[dict[str, Any]]:
    f = Filter(team=team, user=user, job=job, model=model, kind=kind, node=node, zone=zone)
    state = svc.state
    idx = state.select(f)
    with state.lock:
        return [state.gpu_row(i) for i in idx]


@router.get("/api/nodes/{node}", summary="a node: inventory, its GPUs now, open anomalies")
def node_detail(node: str, svc: Services = Depends(services)) -> dict[str, Any]:
    return known(svc.state.node_view(node), "node")


@router.get("/api/gpus/{uuid}", summary="a GPU: current values, latest quantiles, open anomalies")
def gpu_detail(uuid: str, svc: Services = Depends(services)) -> dict[str, Any]:
    return known(svc.state.gpu_view(uuid), "GPU")


@router.get("/api/anomalies", summary="open anomalies (fired, not resolved)")
def anomalies(kind: str | None = Query(None, pattern=LABEL), svc: Services = Depends(services)) -> list[dict[str, Any]]:
    return svc.state.anomalies_view(kind)


@router.get("/api/kpis", summary="latest scheduling KPIs (allocation rate, fragmentation, queue, usage)")
def kpis(
    kpi: str | None = Query(None, pattern=LABEL),
    dimension: str | None = Query(None, pattern=LABEL),
    svc: Services = Depends(services),
) -> list[dict[str, Any]]:
    return svc.state.kpis_view(kpi, dimension)


def known(found: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """``found``, or a 404 naming ``what`` the live state does not hold."""
    if found is None:
        raise HTTPException(404, f"no such {what} in the live state")
    return found
