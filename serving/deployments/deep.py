"""The deep-tier deployment: takes queued deep work from the catalogue shards, runs OCR and NSFW at a
lower CPU priority, and hands the signals back to be stored and published (``serving/scoring/deep.py``)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.config import MarketGuardConfig, configure_process
from serving.scoring.deep import DeepWork

log = logging.getLogger(__name__)


def lower_priority(nice: int, idle_class: bool) -> str:
    """Make this thread, and the threads it starts from now on (the worker, the models' pools),
    yield the CPU: Linux's SCHED_IDLE class when asked and available (they run only on a core
    nothing else wants), else ``nice``. Returns what was applied."""
    if idle_class and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    os.nice(nice)
    return f"nice {nice}"


@serve.deployment(name="deep")
class DeepTier:
    """One worker thread over every catalogue shard's deep queue, in a process that yields the CPU.

    Ray's ``num_cpus`` is bookkeeping, not isolation: OCR at ~0.9 s an image would take the cores
    the request path needs, so the replica's threads run in Linux's idle scheduling class (or at
    ``service.deep.nice``; set once, here, for this process only) and its models on
    ``service.deep.threads`` threads (1).
    """

    def __init__(self, config: MarketGuardConfig, catalogues: Sequence[DeploymentHandle]) -> None:
        configure_process(config)
        self.config = config.service.deep
        lower_priority(self.config.nice, self.config.idle_class)
        images = config.signals.images.model_copy(update={
            "ocr": config.signals.images.ocr.model_copy(update={"threads": self.config.threads}),
            "nsfw": config.signals.images.nsfw.model_copy(update={"threads": self.config.threads})})
        self.work = DeepWork.build(config.signals.model_copy(update={"images": images}), config.data_dir)
        self.catalogues = list(catalogues)
        self.done = 0
        self._stop = threading.Event()
        # A thread, not a task: it waits on the catalogues' answers without holding the event loop,
        # and starts with the replica, whether or not anything ever calls it.
        self._thread = threading.Thread(target=self._run, name="deep-tier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            took = 0
            for catalogue in self.catalogues:
                try:
                    jobs = catalogue.deep_take.remote(self.config.batch, self.config.lease_s).result()
                    if not jobs:
                        continue
                    took += len(jobs)
                    results = self.work.run(jobs)
                    pairs = list(zip(jobs, results, strict=True))
                    self.done += int(catalogue.deep_done.remote(pairs).result())
                except Exception:  # noqa: BLE001 - a failed round is retried; its jobs' leases run out
                    log.exception("deep tier: a round of work failed")
                    time.sleep(self.config.poll_s)
            if not took:
                self._stop.wait(self.config.poll_s)

    async def ready(self) -> bool:
        return self._thread.is_alive()

    def __del__(self) -> None:
        self._stop.set()
