"""``POST /v1/reviews`` and ``DELETE /v1/reviews/{id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from serving.api.app import ApiState
from serving.api.auth import Caller
from serving.api.routes.deps import caller, json_body, one_or_items, state
from serving.api.routes.items import score_body
from signals.errors import InvalidInput
from signals.schemas import ID_PATTERN

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])

REVIEW_EXAMPLE = {
    "review_id": "R1", "product_id": "P7", "seller_id": "S9", "reviewer_id": "U3", "rating": 5,
    "text": "Great product, fast shipping, highly recommend!", "created_at": "2026-11-24T15:00:00Z",
    "verified_purchase": False, "tenant": "default"}


@router.post("", summary="Score a review (or {\"items\": [...]}, up to 256), index it, update its partners",
             responses={200: {"description": "its signals, or one result per item"},
                        413: {"description": "body too large"}, 422: {"description": "bad input"},
                        429: {"description": "over the tenant's rate"}, 503: {"description": "at capacity"}},
             openapi_extra=json_body(one_or_items("Review"),
                                     {"one": REVIEW_EXAMPLE, "batch": {"items": [REVIEW_EXAMPLE]}}))
async def post_reviews(request: Request, st: Annotated[ApiState, Depends(state)],
                        who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    return await score_body("review", request, st, who)


@router.delete("/{review_id}", summary="Take a review down: out of the indexes and store, history kept")
async def delete_review(review_id: Annotated[str, Path(pattern=ID_PATTERN)],
                         st: Annotated[ApiState, Depends(state)], who: Annotated[Caller, Depends(caller)],
                         tenant: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    t = who.resolve(tenant)
    st.limiter.take(t)
    if not await st.backend.delete(t, "review", review_id):
        raise InvalidInput("review_id", f"no listing {review_id!r} in tenant {t!r}", "not_found")
    return {"review_id": review_id, "deleted": True}
