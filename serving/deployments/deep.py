"""The deep-tier deployment: takes queued deep work from the catalogue shards, runs OCR and NSFW at a
lower CPU priority, and hands the signals back to be stored and published (``serving/scoring/deep.py``)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.config import MarketGuardConfig, configure_process
from serving.scoring.deep import DeepWork, DeepWorker
from serving.store.base import DeepJob
from signals.schemas import Signal

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


class _HandleSource:
    """A catalogue shard's deep queue through its Serve handle (called from the worker thread)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def take(self, limit: int, lease_s: float) -> list[DeepJob]:
        jobs: list[DeepJob] = self.handle.deep_take.remote(limit, lease_s).result()
        return jobs

    def done(self, results: list[tuple[DeepJob, list[Signal]]]) -> int:
        return int(self.handle.deep_done.remote(results).result())

    def quiet_for(self) -> float:
        return float(self.handle.deep_quiet_for.remote().result())


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
        self.worker = DeepWorker(DeepWork.build(config.signals.model_copy(update={"images": images}),
                                                config.data_dir),
                                 [_HandleSource(c) for c in catalogues], batch=self.config.batch,
                                 lease_s=self.config.lease_s, poll_s=self.config.poll_s,
                                 yield_s=self.config.yield_s)
        # A thread, not a task: it waits on the catalogues' answers without holding the event loop,
        # and starts with the replica, whether or not anything ever calls it.
        self._thread = threading.Thread(target=self.worker.run_forever, name="deep-tier", daemon=True)
        self._thread.start()

    async def ready(self) -> bool:
        return self._thread.is_alive()

    def __del__(self) -> None:
        self.worker.stop.set()
