"""A writer process for the crash test: adds and removes items, printing each acknowledgement.

Usage: ``python -m tests.indexes.crash_writer DIR START KIND``. It prints ``A id`` after
``add`` returned, ``r id`` before a remove and ``R id`` after it returned, flushing each
line, and forces
frequent compactions so kills also land inside snapshot writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from indexes.config import PdqIndexConfig, PersistenceConfig, VectorIndexConfig
from indexes.pdq import PdqIndex
from indexes.persistence import DurableIndex
from indexes.vector import VectorIndex


def vector_for(item_id: str, dim: int = 16) -> np.ndarray:
    """The deterministic vector of an id, so the checker can verify contents."""
    seed = int(item_id.split("-")[1])
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def hash_for(item_id: str) -> np.ndarray:
    seed = int(item_id.split("-")[1])
    return np.random.default_rng(seed).integers(0, 256, 32, dtype=np.uint8)


def open_store(directory: Path, kind: str) -> DurableIndex:  # type: ignore[type-arg]
    pcfg = PersistenceConfig(compact_log_bytes=20_000)
    if kind == "pdq":
        c = PdqIndexConfig(exact_max=200, tail_min=20, tail_fraction=0.05)
        return DurableIndex(directory, lambda: PdqIndex(c), lambda p: PdqIndex.load(p, c), pcfg)
    v = VectorIndexConfig(dim=16, exact_max=300, quantization="none", nlist=8, nprobe=8)
    return DurableIndex(directory, lambda: VectorIndex(v), lambda p: VectorIndex.load(p, v), pcfg)


def main() -> None:
    directory, start, kind = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    store = open_store(directory, kind)
    print("READY", flush=True)
    i = start
    while True:
        batch = [f"it-{i + k}" for k in range(3)]
        data = np.stack([hash_for(b) if kind == "pdq" else vector_for(b) for b in batch])
        store.add(batch, data, [{"n": i + k} for k in range(3)])
        for b in batch:
            print(f"A {b}", flush=True)
        if i % 4 == 0:
            print(f"r {batch[0]}", flush=True)  # intent: either outcome is fine until acked
            store.remove([batch[0]])
            print(f"R {batch[0]}", flush=True)
        i += 3


if __name__ == "__main__":
    main()
