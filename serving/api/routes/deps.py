"""Dependencies every route uses: the app state and the caller (key -> tenant)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from serving.api.app import ApiState, api_state
from serving.api.auth import Caller


def state(request: Request) -> ApiState:
    return api_state(request)


def caller(request: Request) -> Caller:
    return api_state(request).keys.caller(request)


def json_body(schema: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body the route reads itself (so that its errors are
    the contract's, item by item, and not FastAPI's)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema, "examples": {k: {"value": v} for k, v in examples.items()}}}}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def one_or_items(name: str) -> dict[str, Any]:
    return {"oneOf": [ref(name), {"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 256, "items": ref(name)}}}]}
