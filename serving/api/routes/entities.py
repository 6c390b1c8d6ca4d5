"""``GET /v1/entities/{type}/{id}/signals``: the latest signals of an entity (and its history)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from serving.api.app import ApiState
from serving.api.auth import Caller
from serving.api.routes.deps import caller, state
from signals.errors import InvalidInput
from signals.schemas import ID_PATTERN, EntityType

router = APIRouter(prefix="/v1/entities", tags=["entities"])


@router.get("/{entity_type}/{entity_id}/signals",
            summary="Latest signals of a listing, seller, review, reviewer or product",
            responses={404: {"description": "no signals for this entity in this tenant"}})
async def entity_signals(entity_type: EntityType, entity_id: Annotated[str, Path(pattern=ID_PATTERN)],
                         st: Annotated[ApiState, Depends(state)], who: Annotated[Caller, Depends(caller)],
                         tenant: Annotated[str | None, Query()] = None,
                         history: Annotated[bool, Query(description="every value with its time")] = False
                         ) -> dict[str, Any]:
    t = who.resolve(tenant)
    st.limiter.take(t)
    found = await st.backend.entity(t, entity_type, entity_id, history)
    if found is None:
        raise InvalidInput("entity_id", f"no signals for {entity_type} {entity_id!r} in tenant {t!r}",
                           "not_found")
    return found
