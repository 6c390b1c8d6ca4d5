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
_VALUE_KEYS = ("matched", "normalized")


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
    for match in out["signal"].get("evidence", {}).get("matches", []):
        if not isinstance(match, dict):
            continue
        basis = str(match.get("normalized") or match.get("matched") or "")
        for k in _VALUE_KEYS:
            if isinstance(match.get(k), str):
                match[k] = mask(match[k]) if mode == "mask" else keyed_hash(basis, key or "")
    return out
