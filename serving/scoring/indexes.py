"""Each tenant's durable indexes, opened on first use, stamped with the model that made them.

Layout (the batch job's snapshot layout, so ``--from-batch`` can start from one):
``<root>/<tenant>/<modality>/`` is a :class:`~indexes.persistence.DurableIndex` with a
``model.json`` naming the model and version whose vectors it holds; opening it with
another model is refused with a message naming both (``marketguard reindex`` rebuilds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexes.atomic import write_json_atomic
from indexes.config import IndexesConfig, Modality
from indexes.pdq import PdqIndex
from indexes.persistence import DurableIndex
from indexes.vector import VectorIndex
from signals.errors import InvalidInput

MODEL_STAMP = "model.json"
AnyIndex = DurableIndex[VectorIndex] | DurableIndex[PdqIndex]


def write_model_stamp(directory: Path, modality: Modality, model_id: str) -> None:
    """Record which model made the vectors of the index in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / MODEL_STAMP, {"modality": modality, "model": model_id})


def check_model_stamp(directory: Path, modality: Modality, model_id: str) -> None:
    """Refuse an index made by another model (a missing stamp is written: a new index)."""
    path = directory / MODEL_STAMP
    if not path.exists():
        write_model_stamp(directory, modality, model_id)
        return
    made_by = json.loads(path.read_text(encoding="utf-8")).get("model")
    if made_by != model_id:
        raise InvalidInput(
            "indexes", f"the {modality} index at {str(directory)!r} was built by model {made_by!r}, but the "
                       f"configured model is {model_id!r}; run `marketguard reindex` to rebuild it",
            "invalid")


class TenantIndexes:
    """The listing-text, review-text, PDQ and SSCD indexes of every tenant under ``root``."""

    def __init__(self, root: Path, config: IndexesConfig, models: dict[Modality, str],
                 dims: dict[Modality, int]) -> None:
        self.root = Path(root)
        self.config = config
        self.models = models
        self.dims = dims
        self._open: dict[tuple[str, Modality], AnyIndex] = {}
        self.lock_wait_s = 60.0

    def get(self, tenant: str, modality: Modality, *, create: bool = True) -> AnyIndex | None:
        """The tenant's index of ``modality``; ``None`` when it does not exist and ``create`` is off."""
        key = (tenant, modality)
        if key in self._open:
            return self._open[key]
        directory = self.root / tenant / modality
        if not create and not (directory / "CURRENT").exists():
            return None
        check_model_stamp(directory, modality, self.models[modality])
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                idx = self._open_durable(directory, modality)
                break
            except InvalidInput as exc:
                # A killed predecessor's replica may hold the lock for a few seconds more, until
                # it notices its raylet is gone: wait for it rather than fail the start.
                if "another writer" not in exc.reason or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._open[key] = idx
        return idx

    def _open_durable(self, directory: Path, modality: Modality) -> AnyIndex:
        if modality == "image_pdq":
            pdq_cfg = self.config.pdq
            return DurableIndex(directory, lambda: PdqIndex(pdq_cfg), lambda p: PdqIndex.load(p, pdq_cfg),
                                self.config.persistence)
        vcfg = self.config.vector.model_copy(update={"dim": self.dims[modality]})
        return DurableIndex(directory, lambda: VectorIndex(vcfg), lambda p: VectorIndex.load(p, vcfg),
                            self.config.persistence)

    def tenants(self) -> list[str]:
        """Tenants with an index on disk or open."""
        on_disk = {p.name for p in self.root.iterdir() if p.is_dir()} if self.root.is_dir() else set()
        return sorted(on_disk | {t for t, _ in self._open})

    def opened(self) -> Iterator[tuple[str, Modality, AnyIndex]]:
        for (t, m), idx in list(self._open.items()):
            yield t, m, idx

    def sizes(self) -> dict[tuple[str, str], int]:
        """Items per (tenant, modality) of the open indexes."""
        # a snapshot of the dict: the writer thread may open an index while a scrape reads
        return {(t, m): len(idx.index) for (t, m), idx in list(self._open.items())}

    def meta(self, tenant: str, modality: Modality, item_id: str) -> dict[str, Any] | None:
        idx = self.get(tenant, modality, create=False)
        return None if idx is None else idx.meta.get(item_id)

    def close(self) -> None:
        for idx in self._open.values():
            idx.close()
        self._open.clear()
