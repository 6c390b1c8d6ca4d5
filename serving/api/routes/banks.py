"""Banks of known-bad (``fraud``) and known-good (``benign``) listings, images and reviews."""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Path, Query, Request

from indexes.config import Modality
from serving.api.app import ApiState
from serving.api.auth import Caller
from serving.api.routes.deps import caller, json_body, state
from serving.api.routes.items import read_json
from signals.errors import InvalidInput
from signals.schemas import ID_PATTERN

router = APIRouter(prefix="/v1/banks", tags=["banks"])
BANK_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"

BANK_EXAMPLE = {"modality": "listing_text", "kind": "fraud", "items": [
    {"listing_id": "scam-1", "title": "iPhone 14 Pro 256GB sealed only today", "description": "WhatsApp me",
     "reason": "confirmed scam", "added_by": "case-review"}]}


@router.post("/{bank}/items", summary="Add items to a tenant's bank (created on first use)",
             openapi_extra=json_body({"type": "object", "required": ["items"], "properties": {
                 "modality": {"type": "string", "enum": list(get_args(Modality))},
                 "kind": {"type": "string", "enum": ["fraud", "benign"]}, "tenant": {"type": "string"},
                 "items": {"type": "array", "minItems": 1, "items": {"type": "object"}}}},
                 {"listings": BANK_EXAMPLE}))
async def add_items(request: Request, bank: Annotated[str, Path(pattern=BANK_PATTERN)],
                    st: Annotated[ApiState, Depends(state)],
                    who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    raw = await read_json(request)
    if not isinstance(raw, dict):
        raise InvalidInput(None, "must be a JSON object with items")
    tenant = who.resolve(raw.get("tenant") if isinstance(raw.get("tenant"), str) else None)
    modality = raw.get("modality")
    if modality is not None and modality not in get_args(Modality):
        raise InvalidInput("modality", f"must be one of {', '.join(get_args(Modality))}")
    kind = raw.get("kind", "fraud")
    if kind not in ("fraud", "benign"):
        raise InvalidInput("kind", "must be fraud or benign")
    items = raw.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidInput("items", "must be a non-empty list", "missing" if items is None else "invalid")
    if len(items) > st.config.max_items:
        raise InvalidInput("items", f"at most {st.config.max_items} items", "too_large")
    unknown = set(raw) - {"tenant", "modality", "kind", "items"}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    st.limiter.take(tenant, cost=len(items))
    added = await st.backend.bank_add(tenant, bank, modality, kind, items)
    return {"bank": bank, "added": added}


@router.delete("/{bank}/items/{item_id}", summary="Remove an item from a tenant's bank")
async def remove_item(bank: Annotated[str, Path(pattern=BANK_PATTERN)],
                      item_id: Annotated[str, Path(pattern=ID_PATTERN)],
                      st: Annotated[ApiState, Depends(state)], who: Annotated[Caller, Depends(caller)],
                      tenant: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    t = who.resolve(tenant)
    st.limiter.take(t)
    if not re.match(BANK_PATTERN, bank):
        raise InvalidInput("bank", "not a bank name")
    removed = await st.backend.bank_remove(t, bank, item_id)
    if not removed:
        raise InvalidInput("item_id", f"no item {item_id!r} in bank {bank!r}", "not_found")
    return {"bank": bank, "removed": removed}
