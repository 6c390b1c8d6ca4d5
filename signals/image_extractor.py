"""The common shape of the image extractors: decode (shared, cached), run a model batched, assemble.

An image extractor reads listings. For a batch it decodes every listing's images
through the shared :class:`~signals.image_decode.ImageDecoder` (so PDQ, SSCD, OCR
and NSFW decode each image once between them), runs its model once over all the
decoded images of the batch, and assembles one result per listing.

A listing whose image cannot be used (too large, corrupt, not an image, a path
or URL refused) gets an error naming the image, ``images[2]``, and still gets the
signals of its other images: a scammer must not be able to switch off OCR or NSFW
on a listing by adding one corrupt file. Its per-image features are dropped,
though, since their rows would no longer line up with ``listing.images``. The other
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
        decoded: list[list[DecodedImage]] = []
        failed: list[list[InvalidInput]] = []
        for item in items:
            good: list[DecodedImage] = []
            bad: list[InvalidInput] = []
            for i, ref in enumerate(item.images):
                try:
                    good.append(self.decoder.decode_ref(ref, i))
                except InvalidInput as exc:
                    # Answered here, not raised: raising would make the base class retry the
                    # whole batch item by item, re-running the model on every good listing.
                    bad.append(exc)
            decoded.append(good)
            failed.append(bad)
        flat = [im for d in decoded for im in d]
        outputs = self._run(flat) if flat else []
        if len(outputs) != len(flat):
            raise RuntimeError(f"{self.name} returned {len(outputs)} outputs for {len(flat)} images")
        results: list[ItemResult] = []
        pos = 0
        for item, good, bad in zip(items, decoded, failed, strict=True):
            result = self._assemble(item, good, outputs[pos:pos + len(good)], observed_at)
            pos += len(good)
            if bad:
                first = bad[0]
                more = "".join(f"; {b.field}: {b.reason}" for b in bad[1:])
                # The good images keep their features: one undecodable image must not hide
                # the listing's other photos from matching (an evasion hole).
                result.error = ItemError(self.name, first.reason + more, first.field, first.code)
            results.append(result)
        return results
