"""The deep tier: OCR (into the content rules) and NSFW, run after the listing was answered.

A listing with readable images is answered with its fast signals and ``pending`` naming what
the deep tier will add (``content.offplatform_contact@image_ocr``, ``image.nsfw``); its deep job
(the record and its image bytes) is queued in the store with the listing's own commit, bounded
(``service.deep.max_jobs`` / ``max_bytes``; past it the work is skipped, counted and noted in
the listing's facts, and the request is never slowed). The ``deep`` deployment
(:mod:`serving.deployments.deep`) takes jobs from each catalogue shard, runs :class:`DeepWork`
at a lower CPU priority, and hands the signals back to be stored and published. A job stays
queued until its signals are committed: deep work queued before a SIGKILL is done after the
restart.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from serving.store.base import DeepJob
from signals.config import SignalsConfig
from signals.extractor import Extractor
from signals.registry import ExtractorRegistry, build_registry
from signals.schemas import ImageRef, Listing, Signal


def pending_names(registry: ExtractorRegistry) -> tuple[str, ...]:
    """What a queued job will bring: each deep signal, ``name@extractor`` when a fast extractor
    emits the same name (OCR's ``content.offplatform_contact`` beside the text's)."""
    fast = {n for e in registry.extractors if e.tier == "fast" for n in e.emits}
    return tuple(f"{n}@{e.name}" if n in fast else n
                 for e in registry.extractors if e.tier == "deep" for n in e.emits)


def deep_sources(registry: ExtractorRegistry) -> tuple[str, ...]:
    """The deep extractors' names (their signals' sources, without the version)."""
    return tuple(e.name for e in registry.extractors if e.tier == "deep")


class DeepWork:
    """The registry's deep extractors over queued jobs (listings, rebuilt with their image bytes)."""

    def __init__(self, extractors: Sequence[Extractor]) -> None:
        self.registry = ExtractorRegistry([e for e in extractors if e.tier == "deep"])

    @classmethod
    def build(cls, config: SignalsConfig, data_dir: Path) -> DeepWork:
        return cls(build_registry(config, data_dir).extractors)

    @property
    def enabled(self) -> bool:
        return bool(self.registry.extractors)

    def run(self, jobs: Sequence[DeepJob]) -> list[list[Signal]]:
        """Each job's deep signals, in order (one bad image or job never fails the others)."""
        records = [Listing.model_validate_json(job.record).model_copy(update={"images": [
            ImageRef(data_b64=base64.b64encode(b).decode()) for b in job.images]}) for job in jobs]
        results = self.registry.extract_batch("listing", records, signals_only=True)
        return [list(res.signals) for res in results]
