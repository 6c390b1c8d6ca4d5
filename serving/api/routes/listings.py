"""``POST /v1/listings`` and ``DELETE /v1/listings/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from serving.api.app import ApiState
from serving.api.auth import Caller
from serving.api.routes.deps import caller, json_body, one_or_items, state
from serving.api.routes.items import score_body
from signals.errors import InvalidInput
from signals.schemas import ID_PATTERN

router = APIRouter(prefix="/v1/listings", tags=["listings"])

LISTING_EXAMPLE = {
    "listing_id": "L123", "seller_id": "S9", "title": "iPhone 14 Pro 256GB sealed",
    "description": "Brand new, message me on WhatsApp +44 7400 123456", "price": 199.0, "currency": "GBP",
    "category": "phones", "images": [{"data_b64": "<base64 JPEG or PNG>"}], "tenant": "default"}


@router.post("", summary="Score a listing (or {\"items\": [...]}, up to 256), index it, update its partners",
             responses={200: {"description": "its signals, or one result per item"},
                        413: {"description": "body too large"}, 422: {"description": "bad input"},
                        429: {"description": "over the tenant's rate"}, 503: {"description": "at capacity"}},
             openapi_extra=json_body(one_or_items("Listing"),
                                     {"one": LISTING_EXAMPLE, "batch": {"items": [LISTING_EXAMPLE]}}))
async def post_listings(request: Request, st: Annotated[ApiState, Depends(state)],
                        who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    return await score_body("listing", request, st, who)


@router.delete("/{listing_id}", summary="Take a listing down: out of the indexes and store, history kept")
async def delete_listing(listing_id: Annotated[str, Path(pattern=ID_PATTERN)],
                         st: Annotated[ApiState, Depends(state)], who: Annotated[Caller, Depends(caller)],
                         tenant: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    t = who.resolve(tenant)
    st.limiter.take(t)
    if not await st.backend.delete(t, "listing", listing_id):
        raise InvalidInput("listing_id", f"no listing {listing_id!r} in tenant {t!r}", "not_found")
    return {"listing_id": listing_id, "deleted": True}
