"""The explicit registry of extractors, checked at start-up.

Nothing registers itself on import: :func:`build_registry` lists the extractors
that the config enables, and :class:`ExtractorRegistry` refuses a set whose
declarations are inconsistent (duplicate names, signals not in the catalogue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from signals.catalogue import CATALOGUE
from signals.config import SignalsConfig
from signals.extractor import Extractor, ItemError
from signals.schemas import Listing, RecordKind, Review, Signal

if TYPE_CHECKING:  # image modules (Pillow) load only when an image extractor is enabled
    from signals.image_decode import UrlFetcher


@dataclass
class RecordResult:
    """Everything the registry's extractors produced for one record."""

    entity_id: str
    signals: list[Signal] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    errors: list[ItemError] = field(default_factory=list)


class ExtractorRegistry:
    """A checked set of extractors, and the one place that runs them over a batch."""

    def __init__(self, extractors: Sequence[Extractor]) -> None:
        names = [e.name for e in extractors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"extractor names must be unique; repeated: {dupes}")
        features: dict[str, str] = {}
        for ex in extractors:
            if not ex.accepts:
                raise ValueError(f"extractor {ex.name!r} accepts no record kind")
            for sig in ex.emits:
                if sig not in CATALOGUE:
                    raise ValueError(f"extractor {ex.name!r} emits {sig!r}, not in the catalogue")
            for feat in ex.features:
                if feat in features:
                    raise ValueError(
                        f"feature {feat!r} produced by both {features[feat]!r} and {ex.name!r}")
                features[feat] = ex.name
        self._extractors = list(extractors)

    @property
    def extractors(self) -> list[Extractor]:
        return list(self._extractors)

    def for_kind(self, kind: RecordKind, *, signals_only: bool = False) -> list[Extractor]:
        """The extractors that read ``kind`` records (only those emitting signals, if asked)."""
        return [e for e in self._extractors
                if kind in e.accepts and (e.emits or not signals_only)]

    def extract_batch(
        self, kind: RecordKind, items: Sequence[Listing | Review], *, signals_only: bool = False
    ) -> list[RecordResult]:
        """Run every extractor for ``kind`` over the batch and merge the results per record."""
        merged = [RecordResult(item.entity_id) for item in items]
        for ex in self.for_kind(kind, signals_only=signals_only):
            for out, res in zip(merged, ex.extract_batch(items), strict=True):
                out.signals.extend(res.signals)
                out.features.update(res.features)
                if res.error is not None:
                    out.errors.append(res.error)
        return merged


def build_registry(config: SignalsConfig, data_dir: Path, *,
                   fetch_url: UrlFetcher | None = None) -> ExtractorRegistry:
    """The extractors the config enables, in the order they run.

    ``fetch_url`` fetches ``url`` images (serving builds one with
    ``serving.image_fetch.url_fetcher_for``); without it URL images are refused.
    """
    extractors: list[Extractor] = []
    if config.content_rules.enabled:
        from signals.content_rules import ContentRulesExtractor

        extractors.append(ContentRulesExtractor(config.content_rules))
    if config.text_embedding.enabled:
        from signals.text_embedding import TextEmbeddingExtractor, build_text_embedder

        extractors.append(TextEmbeddingExtractor(
            build_text_embedder(config.text_embedding, data_dir / "models")))
    extractors.extend(build_image_extractors(config, fetch_url))
    return ExtractorRegistry(extractors)


def build_image_extractors(config: SignalsConfig,
                           fetch_url: UrlFetcher | None = None) -> list[Extractor]:
    """The image extractors the config enables, sharing one decoder (one decode per image).

    Fast tier first (PDQ, SSCD, local features), then the deep tier (OCR, NSFW: ``tier == "deep"``),
    which serving may run asynchronously after answering with the fast signals.
    """
    images = config.images
    wanted = [images.pdq.enabled, images.sscd.enabled, images.local.enabled, images.ocr.enabled,
              images.nsfw.enabled]
    if not any(wanted):
        return []
    from signals.image_decode import ImageDecoder

    decoder = ImageDecoder(images.decode, fetch_url)
    out: list[Extractor] = []
    if images.pdq.enabled:
        from signals.image_pdq import PdqExtractor

        out.append(PdqExtractor(decoder))
    if images.sscd.enabled:
        from signals.image_sscd import build_sscd_extractor

        out.append(build_sscd_extractor(images.sscd, decoder))
    if images.local.enabled:
        from signals.image_local import LocalFeatureExtractor

        out.append(LocalFeatureExtractor(decoder, images.local))
    if images.ocr.enabled:
        from signals.image_ocr import OcrExtractor, build_ocr_engine, content_rules_finder

        out.append(OcrExtractor(decoder, build_ocr_engine(images.ocr),
                                content_rules_finder(config.content_rules)))
    if images.nsfw.enabled:
        from signals.image_nsfw import NsfwExtractor, build_nsfw_detector

        out.append(NsfwExtractor(decoder, build_nsfw_detector(images.nsfw),
                                 images.nsfw.min_score))
    return out
