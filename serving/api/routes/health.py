"""Liveness, readiness and Prometheus metrics (never rate limited or shed)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from serving.api.app import ApiState
from serving.api.errors import ApiError
from serving.api.routes.deps import state

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded, indexes reconciled with the store",
            responses={503: {"description": "still starting"}})
async def readyz(st: Annotated[ApiState, Depends(state)]) -> dict[str, Any]:
    if not await st.backend.ready():
        raise ApiError(503, "not_ready", "models or indexes are still loading", headers={"Retry-After": "2"})
    return {"status": "ready", "mode": "local" if st.keys.local_mode else "keys"}


@router.get("/metrics", summary="Prometheus metrics of this replica", response_class=Response)
async def metrics(st: Annotated[ApiState, Depends(state)]) -> Response:
    sizes: dict[tuple[str, str], int] = {}
    sinks: dict[str, dict[str, float]] = {}
    deep: dict[str, float] = {}
    try:
        sizes = await st.backend.index_sizes()
        sinks = await st.backend.sink_stats()
        deep = await st.backend.deep_stats()
    except Exception:  # noqa: BLE001 - metrics must answer even while the catalogue is down
        pass
    return Response(st.metrics.render(sizes, sinks, deep), media_type="text/plain; version=0.0.4")
