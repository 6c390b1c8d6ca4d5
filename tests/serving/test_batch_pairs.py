"""Stage 3 of the batch job on its own: an index snapshot built from a sample, then filled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from indexes.config import IndexesConfig, VectorIndexConfig
from serving.batch_pairs import build_index
from tests.indexes.conftest import random_vectors


class FakeView:
    """What ``build_index`` reads of a ``ModalityView``: ids, vectors, per-item metadata."""

    modality = "listing_text"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.ids = [f"L{i}" for i in range(len(vectors))]

    def __len__(self) -> int:
        return len(self.ids)

    def data(self, pos: np.ndarray) -> np.ndarray:
        return self.vectors[pos]

    def iter_items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return ((i, {"owner": f"S{k % 7}"}) for k, i in enumerate(self.ids))


def test_snapshot_is_trained_for_the_whole_catalogue_not_the_sample(tmp_path: Path) -> None:
    config = IndexesConfig(vector=VectorIndexConfig(dim=16, exact_max=500, train_sample=1_000))
    view = FakeView(random_vectors(3_000, 16, seed=4))
    final = tmp_path / "indexes" / "default" / "listing_text"
    build_index(view, config, final)  # type: ignore[arg-type]
    generation = json.loads((final / "CURRENT").read_text())["generation"]
    meta = json.loads((final / f"snap-{generation}" / "meta.json").read_text())
    # Trained on 1,000 sampled vectors, sized (and due for re-training) for all 3,000.
    assert meta["structure"] == "ivf" and meta["trained_for"] == 3_000
    # The per-item metadata, streamed into the snapshot, is what the service will read.
    items = json.loads((final / f"snap-{generation}" / "items.json").read_text())
    assert len(items) == 3_000 and items["L10"] == {"owner": "S3"}
    assert not (final.parent / "listing_text.tmp").exists()
