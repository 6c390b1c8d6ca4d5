"""The project's one error type for bad input: it names the field and the reason.

Only the HTTP layer turns it into a status code; the CLI turns it into a message
and a non-zero exit; extractors turn it into a per-item error result.
"""

from __future__ import annotations

from typing import Literal

import pydantic

ErrorCode = Literal[
    "invalid",  # 400/422: the value breaks a rule of the schema
    "missing",  # 422: a required field is absent
    "too_large",  # 413: a body, a string or an image is over its limit
    "unsupported_media_type",  # 415: an image format or content type we do not take
    "not_found",  # 404: a referenced file, entity or bank does not exist
    "fetch_failed",  # 422: an allow-listed image URL could not be fetched (timeout, status, TLS)
    "malformed",  # 400: the body is not JSON at all
]


class InvalidInput(ValueError):
    """Bad input, with the offending field (dotted path, ``images[2].data_b64``) and why."""

    def __init__(self, field: str | None, reason: str, code: ErrorCode = "invalid") -> None:
        self.field = field
        self.reason = reason
        self.code: ErrorCode = code
        super().__init__(f"{field}: {reason}" if field else reason)

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str | None, str, ErrorCode]]:
        # Rebuilt from its parts when it crosses a process (a Serve replica to the ingress):
        # the default would call __init__ with the one-message args and fail.
        return (type(self), (self.field, self.reason, self.code))

    def to_dict(self) -> dict[str, str | None]:
        """The body of the contract's error envelope: ``{"code", "message", "field"}``."""
        return {"code": self.code, "message": self.reason, "field": self.field}


def field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic location as a dotted path with list indexes: ``images[0].url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_pydantic(exc: pydantic.ValidationError) -> InvalidInput:
    """Turn pydantic's error list into one InvalidInput naming the first bad field.

    The first error is the one reported; the message says how many more there were,
    so a client fixing its payload is not surprised by the next one.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    # Validators of ours raise InvalidInput inside pydantic; keep its code and field.
    ctx_error = (first.get("ctx") or {}).get("error")
    loc = tuple(first.get("loc", ()))
    if isinstance(ctx_error, InvalidInput):
        path = field_path(loc)
        field = path or ctx_error.field
        if ctx_error.field and path and ctx_error.field not in path:
            field = f"{path}.{ctx_error.field}"
        err = InvalidInput(field, ctx_error.reason, ctx_error.code)
    else:
        kind = first.get("type", "")
        code: ErrorCode = "missing" if kind == "missing" else "invalid"
        msg = str(first.get("msg", "invalid value"))
        if kind == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        err = InvalidInput(field_path(loc) or None, msg, code)
    if len(errors) > 1:
        err.reason += f" (and {len(errors) - 1} more error(s))"
        err.args = (f"{err.field}: {err.reason}" if err.field else err.reason,)
    return err
