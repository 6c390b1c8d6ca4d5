"""Evidence fit to leave the building: contact values masked or replaced by a keyed hash, per sink.

``content.offplatform_contact`` (from the text or from OCR) names the phone numbers, emails,
URLs and handles it found, in ``evidence.matches[].matched`` / ``.normalized``. A sink's
``redact`` setting decides what leaves with them:

* ``none``: the values as found (an internal Redis the risk team owns);
* ``mask``: all but the first two and last two characters replaced by ``*`` (``+4*********32``);
* ``hash``: ``hmac:<16 hex>``, an HMAC-SHA256 of the normalised value under the sink's
  ``redact_key``: a receiver can still see that two listings share a number, not the number.

Kinds, counts, spans and scores are kept. Signals never carry image bytes (the catalogue never
receives them; evidence names images by position).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any, Literal

Redaction = Literal["none", "mask", "hash"]

PERSONAL_SIGNALS = frozenset({"content.offplatform_contact"})
# What a match may carry out as it is; every other string (the value found, its normal form, a
# messaging link, whatever a later rule adds) is masked or hashed: an allowlist, not a denylist.
SAFE_KEYS = frozenset(
    {
        "kind",
        "field",
        "start",
        "end",
        "techniques",
        "app",
        "shortener",
        "ip_host",
        "scheme",
        "source",
        "image",
    }
)


def mask(value: str) -> str:
    """All but the first two and last two characters as ``*`` (short values: all of them)."""
    if len(value) <= 6:
        return "*" * len(value)
    return value[:2] + "*" * (len(value) - 4) + value[-2:]


def keyed_hash(value: str, key: str) -> str:
    return "hmac:" + hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def redact_event(event: dict[str, Any], mode: Redaction, key: str | None = None) -> dict[str, Any]:
    """``event`` as the sink may see it (a copy when anything changes)."""
    signal = event.get("signal")
    if mode == "none" or signal is None or signal.get("name") not in PERSONAL_SIGNALS:
        return event
    if mode == "hash" and not key:
        raise ValueError("redact: hash needs a redact_key")
    out = copy.deepcopy(event)
    evidence = out["signal"].get("evidence", {})
    matches = evidence.get("matches", [])
    evidence["matches"] = [_redact_match(m, mode, key or "") for m in matches if isinstance(m, dict)]
    return out


def _redact_match(match: dict[str, Any], mode: Redaction, key: str) -> dict[str, Any]:
    basis = str(match.get("normalized") or match.get("matched") or "")
    out: dict[str, Any] = {}
    for k, v in match.items():
        if k in SAFE_KEYS and not (k == "app" and not isinstance(v, str)):
            out[k] = v
        elif isinstance(v, str):
            # the value and its normal form share one token, so a receiver can still correlate
            out[k] = (
                mask(v) if mode == "mask" else keyed_hash(basis if k in ("matched", "normalized") else v, key)
            )
        elif isinstance(v, bool | int | float) or v is None:
            out[k] = v
        # anything else (a list, a mapping) that is not known to be safe stays home
    return out
