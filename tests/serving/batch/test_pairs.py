"""Stages 3 and 4 of the batch job on their own: an index snapshot built from a sample, then
filled; block pairs read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexes.clustering import Pairs
from indexes.config import IndexesConfig, VectorIndexConfig
from serving.batch.pairs import build_index, read_pairs, write_block
from signals.errors import InvalidInput
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


def _p(a: list[int], b: list[int], s: list[float]) -> Pairs:
    return Pairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(s, dtype=np.float32))


def test_read_pairs_merges_blocks_each_pair_once_in_int32_rows(tmp_path: Path) -> None:
    """A pair found from both of its blocks is read back once, with its best score."""
    write_block(tmp_path / "0.parquet", _p([0, 1], [5, 2], [0.9, 0.8]))
    write_block(tmp_path / "1.parquet", _p([0, 2], [5, 7], [0.95, 0.7]))
    write_block(tmp_path / "2.parquet", _p([], [], []))
    p = read_pairs(tmp_path)
    assert list(zip(p.a.tolist(), p.b.tolist(), p.score.tolist(), strict=True)) == \
        [(0, 5, pytest.approx(0.95)), (1, 2, pytest.approx(0.8)), (2, 7, pytest.approx(0.7))]
    assert p.a.dtype == p.b.dtype == np.int32
    empty = read_pairs(tmp_path / "missing")
    assert len(empty.a) == 0 and empty.a.dtype == np.int32


def test_read_pairs_refuses_rows_past_int32(tmp_path: Path) -> None:
    write_block(tmp_path / "0.parquet", _p([0], [2**31], [0.9]))
    with pytest.raises(InvalidInput):
        read_pairs(tmp_path)


def test_view_items_carry_their_metadata_past_the_first_chunk(tmp_path: Path) -> None:
    """Snapshot metadata read ``chunk`` rows at a time (a 100k-row catalogue failed past the first)."""
    import pyarrow as pa

    from serving.batch.catalogue import META_SCHEMA, Catalogue
    from serving.batch.pairs import ModalityView

    n = 7
    rows = {name: [None] * n for name in META_SCHEMA.names}
    rows.update(tenant=["t"] * n, entity_id=[f"L{i}" for i in range(n)], owner=[f"S{i}" for i in range(n)],
                group=["g"] * n, price=[float(i) for i in range(n)], currency=["EUR"] * n)
    vectors = random_vectors(n, 8, seed=1)
    cat = Catalogue(tmp_path, "listing", n, 0, 0, pa.table(rows, schema=META_SCHEMA), vectors, "text_x",
                    np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), None, None, None)
    view = ModalityView(cat, "listing_text", np.arange(n), IndexesConfig())
    items = list(view.iter_items(chunk=3))
    assert [i for i, _ in items] == [f"L{i}" for i in range(n)]
    assert [m["owner"] for _, m in items] == [f"S{i}" for i in range(n)]
    assert items[5][1] == {"owner": "S5", "price": 5.0, "currency": "EUR", "category": "g"}
