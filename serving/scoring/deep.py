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
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from serving.store.base import DeepJob
from signals.config import SignalsConfig
from signals.extractor import Extractor
from signals.registry import ExtractorRegistry, build_registry
from signals.schemas import ImageRef, Listing, Signal

log = logging.getLogger(__name__)


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


class DeepSource(Protocol):
    """One catalogue shard as the deep worker sees it."""

    def take(self, limit: int, lease_s: float) -> list[DeepJob]:
        """Up to ``limit`` queued jobs, leased for ``lease_s``."""
        ...

    def done(self, results: list[tuple[DeepJob, list[Signal]]]) -> int:
        """Store (and publish) the jobs' signals; how many were stored."""
        ...

    def quiet_for(self) -> float:
        """Seconds since the shard last answered a request (0 while one is in flight)."""
        ...


class DeepWorker:
    """The deep tier's loop over the catalogue shards' queues: take, run, hand back.

    It yields to the synchronous path. Linux's idle scheduling class only gives the request path the
    CPU; the deep tier's models still share the core's caches and memory bandwidth (and, on a VM, maybe
    the physical core) with it, which measured here doubled the request p50 while OCR ran. So before
    each job, the worker waits until every shard has been without a request for ``yield_s``: deep work
    runs in the gaps between requests, a request overlaps at most the one job that was running when it
    came, and under sustained load the queue fills and sheds (the ``skipped`` record) instead of
    slowing the answers. ``yield_s = 0`` turns that off (a deep tier on cores or a node of its own).
    """

    def __init__(self, work: DeepWork, sources: Sequence[DeepSource], *, batch: int, lease_s: float,
                 poll_s: float, yield_s: float, stop: threading.Event | None = None) -> None:
        self.work = work
        self.sources = list(sources)
        self.batch, self.lease_s, self.poll_s, self.yield_s = batch, lease_s, poll_s, yield_s
        self.stop = stop or threading.Event()
        self.done = 0
        self.yielded = 0
        """Waits for a quiet moment (a metric of how often the request path held deep work back)."""

    def _wait_for_quiet(self) -> bool:
        """Wait until no shard has had a request for ``yield_s``; False if stopped meanwhile."""
        while self.yield_s > 0 and not self.stop.is_set():
            quiet = min((s.quiet_for() for s in self.sources), default=float("inf"))
            if quiet >= self.yield_s:
                return True
            self.yielded += 1
            self.stop.wait(max(self.yield_s - quiet, 0.01))
        return not self.stop.is_set()

    def round(self) -> int:
        """One look at every shard's queue, its jobs run one at a time in quiet moments; jobs run.
        A job not run (stopped) goes back when its lease runs out."""
        ran = 0
        for source in self.sources:
            if not self._wait_for_quiet():
                return ran
            jobs = source.take(self.batch, self.lease_s)
            results: list[tuple[DeepJob, list[Signal]]] = []
            for k, job in enumerate(jobs):
                if k and not self._wait_for_quiet():
                    break
                results.append((job, self.work.run([job])[0]))
            if results:
                self.done += int(source.done(results))
                ran += len(results)
        return ran

    def run_forever(self) -> None:
        """Rounds until stopped; a failed round is logged and retried (its jobs' leases run out)."""
        while not self.stop.is_set():
            try:
                ran = self.round()
            except Exception:  # noqa: BLE001 - the deep tier must outlive one bad round
                log.exception("deep tier: a round of work failed")
                ran = 0
            if not ran:
                self.stop.wait(self.poll_s)
