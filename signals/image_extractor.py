"""The common shape of the image extractors: decode (shared, cached), run a model batched, assemble.

An image extractor reads listings. For a batch it decodes every listing's images
through the shared :class:`~signals.image_decode.ImageDecoder` (so PDQ, SSCD, OCR
and NSFW decode each image once between them), runs its model once over all the
decoded images of the batch, and assembles one result per listing.

A listing whose image cannot be used (too large, corrupt, not an image, a path
or URL refused) gets an error result naming the image, ``images[2]``; the other
listings of the batch go on. A listing without images gets an empty result.

Per-image features: ``ItemResult.features`` is one array per name per listing, so
per-image values are stacked with the image as the first axis, in
``listing.images`` order: ``features["image_pdq"]`` is ``(n_images, 32)`` uint8 and
``features["image_sscd_distilled"]`` is ``(n_images, 512)`` float32. The names are
declared in ``per_image_features``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar, Generic, TypeVar

from signals.errors import InvalidInput
from signals.extractor import Extractor, ItemError, ItemResult
from signals.image_decode import DecodedImage, ImageDecoder
from signals.schemas import Listing, RecordKind

OutT = TypeVar("OutT")


class ImageExtractor(Extractor[Listing], Generic[OutT]):
    """Base of the image extractors: subclasses implement ``_run`` and ``_assemble``."""

    accepts: ClassVar[tuple[RecordKind, ...]] = ("listing",)
    # Features whose first axis is the listing's image (see the module docstring).
    per_image_features: ClassVar[tuple[str, ...]] = ()

    def __init__(self, decoder: ImageDecoder) -> None:
        self.decoder = decoder

    @abstractmethod
    def _run(self, images: Sequence[DecodedImage]) -> list[OutT]:
        """The model over every decoded image of a batch: one output per image, in order."""

    @abstractmethod
    def _assemble(self, item: Listing, images: Sequence[DecodedImage], outputs: Sequence[OutT],
                  observed_at: datetime) -> ItemResult:
        """One listing's result from its images' outputs (``images`` may be empty)."""

    def _extract_batch(self, items: Sequence[Listing], observed_at: datetime) -> list[ItemResult]:
        decoded: list[list[DecodedImage] | InvalidInput] = []
        for item in items:
            try:
                decoded.append(self.decoder.decode_listing(item))
            except InvalidInput as exc:
                # Answered here, not raised: raising would make the base class retry the
                # whole batch item by item, re-running the model on every good listing.
                decoded.append(exc)
        flat = [im for d in decoded if not isinstance(d, InvalidInput) for im in d]
        outputs = self._run(flat) if flat else []
        if len(outputs) != len(flat):
            raise RuntimeError(f"{self.name} returned {len(outputs)} outputs for {len(flat)} images")
        results: list[ItemResult] = []
        pos = 0
        for item, d in zip(items, decoded, strict=True):
            if isinstance(d, InvalidInput):
                results.append(ItemResult(item.entity_id,
                                          error=ItemError(self.name, d.reason, d.field, d.code)))
                continue
            results.append(self._assemble(item, d, outputs[pos:pos + len(d)], observed_at))
            pos += len(d)
        return results
