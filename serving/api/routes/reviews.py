"""``POST /v1/reviews`` and ``DELETE /v1/reviews/{id}``."""

from __future__ import annotations

from serving.api.routes.items import record_router

REVIEW_EXAMPLE = {
    "review_id": "R1", "product_id": "P7", "seller_id": "S9", "reviewer_id": "U3", "rating": 5,
    "text": "Great product, fast shipping, highly recommend!", "created_at": "2026-11-24T15:00:00Z",
    "verified_purchase": False, "tenant": "default"}

router = record_router("review", REVIEW_EXAMPLE)
