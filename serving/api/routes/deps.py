"""Dependencies every route uses: the app state and the caller (key -> tenant)."""

from __future__ import annotations

from fastapi import Request

from serving.api.app import ApiState, api_state
from serving.api.auth import Caller


def state(request: Request) -> ApiState:
    return api_state(request)


def caller(request: Request) -> Caller:
    return api_state(request).keys.caller(request)
