"""The synchronous tier of extraction for the service: the registry's fast extractors over a batch.

OCR and NSFW (``tier == "deep"``) are left out of the request path; the publishing
issue runs them asynchronously. The same registry objects serve the batch job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from indexes.config import Modality
from serving.config import ShadowConfig
from serving.scoring.engine import Extracted
from signals.config import SignalsConfig
from signals.extractor import Extractor
from signals.image_decode import UrlFetcher
from signals.registry import ExtractorRegistry, build_registry
from signals.schemas import Listing, RecordKind, Review, Signal

PDQ_MODEL = "pdq@1"


class FastExtraction:
    """The fast extractors of a registry, run over a batch of one record kind, and the shadow
    candidates (``shadow``: config's candidate extractors, their signals marked shadow)."""

    def __init__(self, registry: ExtractorRegistry, shadow: Sequence[Extractor] = (),
                 shadow_label: str = "candidate") -> None:
        self.registry = ExtractorRegistry([e for e in registry.extractors if e.tier == "fast"])
        self.shadow = ExtractorRegistry(list(shadow)) if shadow else None
        self.shadow_label = shadow_label

    @classmethod
    def build(cls, config: SignalsConfig, data_dir: Path, fetch_url: UrlFetcher | None = None,
              shadow: ShadowConfig | None = None) -> FastExtraction:
        candidates: list[Extractor] = []
        if shadow is not None and shadow.content_rules is not None:
            from signals.content_rules import ContentRulesExtractor

            candidates.append(ContentRulesExtractor(shadow.content_rules))
        return cls(build_registry(config, data_dir, fetch_url=fetch_url), candidates,
                   shadow.label if shadow is not None else "candidate")

    def extract(self, kind: RecordKind, items: Sequence[Listing | Review]) -> list[Extracted]:
        """One :class:`Extracted` per item, in order; an extractor's failure on one item is
        that item's error, the others go on. Shadow candidates' signals come after the live ones."""
        results = self.registry.extract_batch(kind, items, signals_only=False)
        out = [Extracted(item, res.signals, res.features, res.errors)
               for item, res in zip(items, results, strict=True)]
        if self.shadow is not None:
            for ex, res in zip(out, self.shadow.extract_batch(kind, items, signals_only=True), strict=True):
                ex.signals = [*ex.signals, *(self._as_shadow(s) for s in res.signals)]
        return out

    def _as_shadow(self, s: Signal) -> Signal:
        name, version = s.source.split("@", 1)
        return s.model_copy(update={"source": f"{name}_{self.shadow_label}@{version}", "shadow": True})

    def models(self) -> tuple[dict[Modality, str], dict[Modality, int]]:
        """Which model makes each modality's vectors (stamped on the indexes) and its dimension."""
        models: dict[Modality, str] = {"image_pdq": PDQ_MODEL}
        dims: dict[Modality, int] = {}
        for ex in self.registry.extractors:
            embedder = getattr(ex, "embedder", None)
            if ex.name == "text_embedding" and embedder is not None:
                models["listing_text"] = models["review_text"] = str(embedder.model_id)
                dims["listing_text"] = dims["review_text"] = int(embedder.dim)
            elif ex.name.startswith("image_sscd"):
                models["image_sscd"] = f"{getattr(ex, 'model', ex.name)}@{ex.version}"
                dims["image_sscd"] = 512
        return models, dims

    def warm_up(self) -> None:
        """Load every model now (readiness means loaded), not on the first request."""
        for ex in self.registry.extractors:
            warm = getattr(getattr(ex, "embedder", None), "warm_up", None)
            if callable(warm):
                warm()
