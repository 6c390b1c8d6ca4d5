"""One place that turns errors into the contract's JSON: ``{"error": {"code", "message", "field"}}``.

Routes raise :class:`~signals.errors.InvalidInput` (or :class:`ApiError` for auth, rate and
capacity); the handlers here pick the status code, so no route formats an error by hand.
Bad input is never a 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.store.base import StoreUnavailable
from signals.errors import InvalidInput, field_path

STORE_RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 while the store's database is unavailable."""

STATUS_OF_CODE: dict[str, int] = {
    "invalid": 422,
    "missing": 422,
    "too_large": 413,
    "unsupported_media_type": 415,
    "not_found": 404,
    "fetch_failed": 422,
    "malformed": 400,
}


class ApiError(Exception):
    """An error with its own status (401, 403, 429, 503) and optional headers."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def error_body(code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def invalid_body(exc: InvalidInput) -> dict[str, Any]:
    return {"error": exc.to_dict()}


def status_of(exc: InvalidInput) -> int:
    return STATUS_OF_CODE.get(exc.code, 422)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(invalid_body(exc), status_code=status_of(exc))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = tuple(x for x in first.get("loc", ()) if x not in ("body", "query", "path"))
        kind = str(first.get("type", ""))
        if kind == "json_invalid":
            return JSONResponse(error_body("malformed", "the body is not valid JSON", None), status_code=400)
        code = "missing" if kind == "missing" else "invalid"
        return JSONResponse(error_body(code, str(first.get("msg", "invalid value")), field_path(loc) or None),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code,
                                                                                   "http_error")
        return JSONResponse(error_body(code, str(exc.detail), None), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        # The store's database is down or failing over: nothing was acknowledged; try again soon.
        return JSONResponse(error_body("unavailable", "the signal store is unavailable; retry", None),
                            status_code=503, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug or a dependency down: 500 without internals (the log has the traceback).
        import logging

        logging.getLogger("marketguard.api").exception("unhandled error")
        return JSONResponse(error_body("internal", "internal error", None), status_code=500)
