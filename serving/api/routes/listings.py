"""``POST /v1/listings`` and ``DELETE /v1/listings/{id}``."""

from __future__ import annotations

from serving.api.routes.items import record_router

LISTING_EXAMPLE = {
    "listing_id": "L123", "seller_id": "S9", "title": "iPhone 14 Pro 256GB sealed",
    "description": "Brand new, message me on WhatsApp +44 7400 123456", "price": 199.0, "currency": "GBP",
    "category": "phones", "images": [{"data_b64": "<base64 JPEG or PNG>"}], "tenant": "default"}

router = record_router("listing", LISTING_EXAMPLE)
