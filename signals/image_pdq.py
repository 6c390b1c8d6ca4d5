"""PDQ perceptual hashes of listing images, in ThreatExchange/HMA's hex form.

``pdqhash.compute`` returns the 256 bits most significant first: element 0 is
bit 255 of ThreatExchange's ``Hash256`` (``w[15] >> 15``). ThreatExchange and
HMA print a hash as 64 lower-case hex digits, ``w[15]`` first (``Hash256::format``
in C++; ``"%0*X" % (64, int(bits, 2))`` in python-threatexchange). Packing the
bits big-endian therefore gives the same bytes and the same hex, so banks
exchanged as HMA CSV interoperate: :func:`signals.pdq_hash.pdq_to_hex` /
:func:`signals.pdq_hash.pdq_from_hex` (with :func:`~signals.pdq_hash.hamming`, the one
implementation, shared with ``indexes/``).

Quality (0-100) below :data:`PDQ_WEAK_QUALITY` means a flat or featureless image
whose hash matches too easily: kept, but matching must treat it as weak.

Features (per image, first axis = ``listing.images`` order):
- ``image_pdq``: ``(n, 32)`` uint8, the hash packed as above;
- ``image_pdq_flip``: ``(n, 32)`` uint8, the hash of the left-right mirror image,
  from the same pass (``compute_dihedral``), so a mirrored copy can be matched by
  querying with it (PDQ alone does not survive a flip);
- ``image_pdq_quality``: ``(n,)`` float32, the quality;
- ``image_pdq_trimmed``: ``(n, 32)`` uint8, the hash of the image with its frame
  (padding, letterboxing, screenshot chrome) trimmed by
  :func:`signals.image_decode.trim_borders`; equal to ``image_pdq`` when there is no
  frame, which is most images, and then costs nothing more. ``image_pdq`` itself stays
  the untrimmed hash, so that it is the very hash ThreatExchange/HMA compute and banks
  interoperate; index the trimmed hash beside it and query with both (and the mirror).
  Measured on ``benchmarks/images.py``: padded and screenshot copies go from 0 to 1.0
  recall, overall from 0.62 to 0.75 with the mirror hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import numpy as np

from signals.extractor import ItemResult
from signals.image_decode import DecodedImage, trim_borders
from signals.image_extractor import ImageExtractor
from signals.pdq_hash import pdq_to_hex
from signals.schemas import Listing

PDQ_WEAK_QUALITY = 50
"""ThreatExchange's advice: hashes of quality below 50 are too weak to match on alone."""

# compute_dihedral's order: original, rot90, rot180, rot270, flip vertical, flip horizontal, ...
_DIHEDRAL_MIRROR = 5


@dataclass(frozen=True)
class PdqHash:
    """One image's PDQ: the packed 256 bits, its mirror image's, the quality, and the hash
    of the image with its frame trimmed (``bits`` itself when there is no frame)."""

    bits: np.ndarray  # (32,) uint8
    mirror: np.ndarray  # (32,) uint8
    quality: int
    trimmed: np.ndarray  # (32,) uint8

    @property
    def hex(self) -> str:
        return pdq_to_hex(self.bits)

    @property
    def weak(self) -> bool:
        return self.quality < PDQ_WEAK_QUALITY


def pack_bits(vector: np.ndarray) -> np.ndarray:
    """pdqhash's 256 0/1 values (bit 255 first) as 32 bytes, most significant bit first."""
    v = np.asarray(vector)
    if v.shape != (256,):
        raise ValueError(f"a PDQ bit vector has 256 elements, not {v.shape}")
    return np.packbits(v.astype(np.uint8) & 1)


def pdq_of_rgb(rgb: np.ndarray) -> PdqHash:
    """PDQ of an (h, w, 3) uint8 RGB array, with its mirror and its frame-trimmed hash."""
    import pdqhash

    vectors, quality = pdqhash.compute_dihedral(_writable(rgb))
    bits = pack_bits(vectors[0])
    inner = trim_borders(rgb)
    trimmed = bits if inner is rgb else pack_bits(pdqhash.compute(_writable(inner))[0])
    return PdqHash(bits, pack_bits(vectors[_DIHEDRAL_MIRROR]), int(quality), trimmed)


def _writable(rgb: np.ndarray) -> np.ndarray:
    # pdqhash's Cython signature wants a C-contiguous writable char array.
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    return arr if arr.flags.writeable else arr.copy()


class PdqExtractor(ImageExtractor[PdqHash]):
    """PDQ hashes of every image of a listing; features only (matching is the indexes' job)."""

    name: ClassVar[str] = "image_pdq"
    version: ClassVar[int] = 1  # image_pdq_trimmed was added; no emitted value changed meaning
    features: ClassVar[tuple[str, ...]] = ("image_pdq", "image_pdq_flip", "image_pdq_quality",
                                           "image_pdq_trimmed")
    per_image_features: ClassVar[tuple[str, ...]] = features

    def _run(self, images: Sequence[DecodedImage]) -> list[PdqHash]:
        return [pdq_of_rgb(im.rgb) for im in images]

    def _assemble(self, item: Listing, images: Sequence[DecodedImage],
                  outputs: Sequence[PdqHash], observed_at: datetime) -> ItemResult:
        if not images:
            return ItemResult(item.entity_id)
        return ItemResult(item.entity_id, features={
            "image_pdq": np.stack([h.bits for h in outputs]),
            "image_pdq_flip": np.stack([h.mirror for h in outputs]),
            "image_pdq_quality": np.array([h.quality for h in outputs], dtype=np.float32),
            "image_pdq_trimmed": np.stack([h.trimmed for h in outputs]),
        })
