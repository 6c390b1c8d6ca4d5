"""``POST /v1/labels``: outcome feedback (an entity confirmed fraud or legit); durable, with history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from serving.api.app import ApiState
from serving.api.auth import Caller
from serving.api.routes.deps import caller, json_body, ref, state
from serving.api.routes.items import read_json
from signals.errors import InvalidInput
from signals.schemas import Label, parse_record

router = APIRouter(prefix="/v1/labels", tags=["labels"])

LABEL_EXAMPLE = {"entity_type": "seller", "entity_id": "S9", "label": "fraud", "reason": "stolen photos",
                 "labelled_by": "case-review", "labelled_at": "2026-11-24T16:00:00Z"}


@router.post("", summary="Record an outcome label; later labels win, earlier ones are kept",
             openapi_extra=json_body(ref("Label"), {"label": LABEL_EXAMPLE}))
async def post_label(request: Request, st: Annotated[ApiState, Depends(state)],
                     who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    raw = await read_json(request)
    if not isinstance(raw, dict):
        raise InvalidInput(None, "a label must be a JSON object")
    tenant = who.resolve(raw.get("tenant") if isinstance(raw.get("tenant"), str) else None)
    label = parse_record(Label, {**raw, "tenant": tenant})
    st.limiter.take(tenant)
    label_id = await st.backend.add_label(label)
    history = await st.backend.labels(tenant, label.entity_type, label.entity_id)
    return {"id": label_id, "label": label.model_dump(mode="json"), "labels": len(history)}
