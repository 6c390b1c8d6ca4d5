"""PDQ hashes as data: 32 packed bytes, ThreatExchange/HMA's hex form, Hamming distance.

The one implementation, used by the PDQ extractor (:mod:`signals.image_pdq`), the PDQ
index and the banks (``indexes/``). A packed hash is a ``uint8`` array of
:data:`PDQ_BYTES` bytes, most significant bit first; ThreatExchange and HMA print the
same bytes as 64 lower-case hex digits, so banks exchanged as HMA CSV interoperate.
Bad input raises :class:`~signals.errors.InvalidInput` naming the field.
"""

from __future__ import annotations

import re

import numpy as np

from signals.errors import InvalidInput

PDQ_BYTES = 32
"""A PDQ hash is 256 bits: 32 bytes packed, 64 hex digits."""
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def pdq_from_hex(value: str, field: str = "pdq") -> np.ndarray:
    """Parse a 64-hex-digit PDQ hash (either case) into 32 bytes.

    Exactly 64 hex digits, nothing else (no spaces, no ``0x``): ``bytes.fromhex`` alone
    would skip whitespace and turn a spaced 64-character string into fewer than 32 bytes.
    """
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise InvalidInput(field, f"a PDQ hash is exactly 64 hex digits, got {value!r:.80}")
    return np.frombuffer(bytes.fromhex(value), dtype=np.uint8).copy()


def pdq_to_hex(packed: np.ndarray, field: str = "pdq") -> str:
    """A packed hash (uint8, 32 bytes) in the 64-hex-digit form ThreatExchange and HMA use."""
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.shape != (PDQ_BYTES,):
        raise InvalidInput(field, f"a packed PDQ hash is uint8 ({PDQ_BYTES},), got {p.dtype} {p.shape}")
    return p.tobytes().hex()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances (0-256) between packed hashes, int32, row by row.

    ``a`` and ``b`` are uint8 arrays whose last axis is a hash's 32 bytes; they broadcast,
    so ``hamming(rows, query)`` scans ``rows`` (n, 32) for one query (32,) and gives (n,);
    two single hashes give a 0-d array.
    """
    x = np.bitwise_xor(_words(a, "a"), _words(b, "b"))
    return np.asarray(np.bitwise_count(x).sum(axis=-1, dtype=np.int32))


def _words(hashes: np.ndarray, field: str) -> np.ndarray:
    # Four uint64 words a hash: a quarter of the XOR and popcount work of single bytes.
    arr = np.asarray(hashes)
    if arr.dtype != np.uint8 or arr.ndim == 0 or arr.shape[-1] != PDQ_BYTES:
        raise InvalidInput(
            field, f"packed PDQ hashes are uint8 (..., {PDQ_BYTES}), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr).view(np.uint64)
