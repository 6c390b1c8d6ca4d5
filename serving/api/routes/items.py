"""The listings and reviews routers: score one record or ``{"items": [...]}``, take one down.

Both resources behave alike, so one factory builds both routers (:func:`record_router`).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from serving.api.app import ApiState
from serving.api.auth import Caller
from serving.api.errors import ApiError, invalid_body
from serving.api.routes.deps import caller, json_body, one_or_items, state
from signals.errors import InvalidInput
from signals.schemas import ID_PATTERN, Listing, RecordKind, Review, parse_record


async def read_json(request: Request) -> Any:
    raw = await request.body()
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise InvalidInput(None, f"send application/json, not {ctype}", "unsupported_media_type")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(None, f"the body is not valid JSON ({exc})", "malformed") from None
    except RecursionError:
        raise InvalidInput(None, "the body's JSON is nested too deeply", "malformed") from None


def _record(kind: RecordKind, raw: Any, caller: Caller, field_prefix: str = "") -> Listing | Review:
    if not isinstance(raw, dict):
        raise InvalidInput(field_prefix.rstrip(".") or None, f"a {kind} must be a JSON object")
    requested = raw.get("tenant")
    tenant = caller.resolve(requested if isinstance(requested, str) else None, f"{field_prefix}tenant")
    model: type[Listing] | type[Review] = Listing if kind == "listing" else Review
    try:
        return parse_record(model, {**raw, "tenant": tenant})
    except InvalidInput as exc:
        field = f"{field_prefix}{exc.field}" if exc.field else (field_prefix.rstrip(".") or None)
        raise InvalidInput(field, exc.reason, exc.code) from None


async def score_body(kind: RecordKind, request: Request, state: ApiState, caller: Caller) -> dict[str, Any]:
    body = await read_json(request)
    id_field = "listing_id" if kind == "listing" else "review_id"
    if isinstance(body, dict) and "items" in body and id_field not in body:
        items = body["items"]
        if not isinstance(items, list):
            raise InvalidInput("items", "must be a list")
        if len(items) > state.config.max_items:
            raise InvalidInput("items", f"at most {state.config.max_items} items", "too_large")
        if not items:
            raise InvalidInput("items", "must not be empty")
        results: list[dict[str, Any] | None] = [None] * len(items)
        good: list[tuple[int, Listing | Review]] = []
        for k, raw in enumerate(items):
            try:
                good.append((k, _record(kind, raw, caller, f"items[{k}].")))
            except InvalidInput as exc:
                results[k] = invalid_body(exc)
            except ApiError as exc:
                results[k] = {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}
        state.limiter.take_all(Counter(r.tenant for _, r in good))  # one token an item
        scored = await state.backend.score(kind, [r for _, r in good]) if good else []
        for (k, _), s in zip(good, scored, strict=True):
            results[k] = _answer(id_field, s)
            state.metrics.signals.labels(kind).inc(len(s.signals))
        state.metrics.batch_size.labels(f"{kind}_request").observe(len(good))
        return {"items": results}
    record = _record(kind, body, caller)
    state.limiter.take(record.tenant)
    one = (await state.backend.score(kind, [record]))[0]
    if one.error is not None:
        raise one.error
    state.metrics.batch_size.labels(f"{kind}_request").observe(1)
    state.metrics.signals.labels(kind).inc(len(one.signals))
    return _answer(id_field, one)


def _answer(id_field: str, scored: Any) -> dict[str, Any]:
    if scored.error is not None:
        return invalid_body(scored.error)
    return {id_field: scored.entity_id, "signals": scored.signals, "pending": scored.pending}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "its signals, or one result per item"}, 413: {"description": "body too large"},
    422: {"description": "bad input"}, 429: {"description": "over the tenant's rate"},
    503: {"description": "at capacity"}}


def record_router(kind: RecordKind, example: dict[str, Any]) -> APIRouter:
    """``POST /v1/<kind>s`` and ``DELETE /v1/<kind>s/{id}`` for listings or reviews."""
    plural, model = f"{kind}s", "Listing" if kind == "listing" else "Review"
    id_field = f"{kind}_id"
    router = APIRouter(prefix=f"/v1/{plural}", tags=[plural])

    @router.post("", summary=f"Score a {kind} (or {{\"items\": [...]}}, up to 256), index it, update its "
                             "partners", name=f"post_{plural}",
                 responses=_RESPONSES, openapi_extra=json_body(
                     one_or_items(model), {"one": example, "batch": {"items": [example]}}))
    async def post(request: Request, st: Annotated[ApiState, Depends(state)],
                   who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        return await score_body(kind, request, st, who)

    @router.delete("/{item_id}", summary=f"Take a {kind} down: out of the indexes and store, history kept",
                   name=f"delete_{kind}")
    async def delete(item_id: Annotated[str, Path(pattern=ID_PATTERN)],
                     st: Annotated[ApiState, Depends(state)], who: Annotated[Caller, Depends(caller)],
                     tenant: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        t = who.resolve(tenant)
        st.limiter.take(t)
        if not await st.backend.delete(t, kind, item_id):
            raise InvalidInput(id_field, f"no {kind} {item_id!r} in tenant {t!r}", "not_found")
        return {id_field: item_id, "deleted": True}

    return router
