"""The unit-vector index: cosine similarity (inner product) over string ids.

Structure, chosen by measurement (README, ``benchmarks/index.py``):

* up to ``exact_max`` vectors an exact ``IndexFlatIP`` behind an ``IndexIDMap2``;
* past that an IVF partition (``IndexIVFScalarQuantizer`` with SQ8/fp16, or
  ``IndexIVFFlat``) trained on a sample, searched with ``nprobe`` cells.

Both accept ``add_with_ids`` and both are searchable the moment ``add`` returns:
an IVF add encodes the vector straight into its inverted list, so there is no
rebuild between an add and the next query (HMA's 30 s reload is what we avoid).

Removal is real, not a filter: the IVF carries a hashtable direct map, so
``remove_ids`` finds and swaps out each code in O(1). ``update`` is remove + add
under the same id. "Compaction" (:meth:`VectorIndex.compact`) is therefore only
about balance: once the index has grown ``retrain_growth`` times past the size its
cells were trained for, it is re-trained on a fresh sample and rebuilt (lossy
with SQ8: the rebuild re-encodes decoded vectors; a snapshot of raw vectors is the
caller's choice). The rebuild also renumbers labels into a fresh
:class:`~indexes.ids.IdMap`, so removed items stop costing id-map memory.

String ids live in the compact :class:`~indexes.ids.IdMap` (~32 bytes an id); a
snapshot is ``index.faiss`` + ``ids.npz`` + ``meta.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from indexes.atomic import fsync_dir, read_snapshot_meta, write_file_atomic, write_json_atomic
from indexes.config import VectorIndexConfig
from indexes.ids import IdMap, check_ids
from signals.errors import InvalidInput

Structure = Literal["flat", "ivf"]
_FORMAT = "marketguard.vector_index/2"  # /2: ids in ids.npz (compact IdMap), not meta.json
# The IVF's id -> entry map as a hash table (removals by id). faiss's stubs lack DirectMap.
_DIRECT_MAP_HASHTABLE: int = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # not in faiss's stubs


def _callback_writer(write: Callable[[bytes], Any]) -> faiss.IOWriter:
    """A FAISS writer that hands each chunk to ``write`` (streams an index into a file object)."""
    return faiss.PyCallbackIOWriter(write)  # type: ignore[attr-defined]  # not in faiss's stubs


@dataclass(frozen=True, slots=True)
class Hit:
    """One neighbour: the caller's id and its cosine similarity to the query."""

    id: str
    score: float


def _sq_type(quantization: str) -> int | None:
    if quantization == "sq8":
        return faiss.ScalarQuantizer.QT_8bit
    if quantization == "fp16":
        return faiss.ScalarQuantizer.QT_fp16
    if quantization == "none":
        return None
    raise ValueError(f"Unsupported quantization {quantization!r}")


class VectorIndex:
    """Top-k and threshold search over unit vectors, keyed by string ids."""

    def __init__(self, config: VectorIndexConfig | None = None) -> None:
        # config.threads is process-wide (FAISS's OpenMP pool): indexes.runtime.configure_process
        # applies it at start-up; an index never changes it.
        self.config = config or VectorIndexConfig()
        self._ids = IdMap()
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.config.dim))
        self._structure: Structure = "flat"
        self._trained_for = 0  # the size the IVF cells were trained for

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self.config.dim

    @property
    def structure(self) -> Structure:
        """``flat`` (exact) or ``ivf`` (approximate)."""
        return self._structure

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def ids(self) -> list[str]:
        """All ids currently in the index."""
        return self._ids.ids()

    # -------------------------------------------------------------- validation
    def prepare(self, ids: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Validate an add batch and return it as (ids, C-contiguous float32 array).

        Raises :class:`InvalidInput` naming the offending field; nothing is changed.
        """
        ids = check_ids(ids)
        arr = self._check_vectors(vectors, "vectors")
        if arr.shape[0] != len(ids):
            raise InvalidInput("vectors", f"{arr.shape[0]} vectors for {len(ids)} ids")
        return ids, arr

    def _check_vectors(self, vectors: np.ndarray, field: str) -> np.ndarray:
        arr = np.asarray(vectors)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise InvalidInput(field, f"expected shape (n, {self.dim}), got {tuple(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.number):
            raise InvalidInput(field, f"expected numbers, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise InvalidInput(f"{field}[{int(np.argmin(finite))}]", "NaN or infinite value")
        norms = np.linalg.norm(arr, axis=1)
        bad = np.abs(norms - 1.0) > self.config.norm_tolerance
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidInput(f"{field}[{i}]", f"not a unit vector (norm {norms[i]:.4f})")
        return arr

    # --------------------------------------------------------------- mutations
    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Add (or replace) a batch; every vector is searchable when this returns."""
        ids, arr = self.prepare(ids, vectors)
        if not ids:
            return
        dropped = self._ids.drop_batch(ids)
        self._remove_labels(dropped[dropped >= 0])
        migrate = self._structure == "flat" and len(self._ids) + len(ids) > self.config.exact_max
        old_labels, old_vecs = self._all_vectors() if migrate else (None, None)
        labels = self._ids.assign_batch(ids)
        if old_labels is not None and old_vecs is not None:
            # Migrate: the flat index plus this batch train the IVF.
            both = np.vstack([old_vecs, arr])
            self._build_ivf(np.concatenate([old_labels, labels]), both, len(both))
            return
        self._index.add_with_ids(arr, labels)

    def update(self, ids: list[str], vectors: np.ndarray) -> None:
        """Replace the vectors of existing ids (same as :meth:`add`, which also replaces)."""
        self.add(ids, vectors)

    def remove(self, ids: list[str]) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed."""
        dropped = self._ids.drop_batch(list(ids))
        labels = dropped[dropped >= 0]
        self._remove_labels(labels)
        return len(labels)

    def _remove_labels(self, labels: np.ndarray) -> None:
        if not len(labels):
            return
        arr = np.ascontiguousarray(labels, dtype=np.int64)
        sel: faiss.IDSelector
        if self._structure == "ivf":
            # The hashtable direct map only takes an IDSelectorArray.
            sel = faiss.IDSelectorArray(len(arr), faiss.swig_ptr(arr))
        else:
            sel = faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr))
        removed = self._index.remove_ids(sel)
        if removed != len(arr):
            raise RuntimeError(
                f"FAISS removed {removed} of {len(arr)} vectors: the index and its id map diverged")

    def build(self, ids: list[str], vectors: np.ndarray, *, expected_size: int | None = None) -> None:
        """Bulk-load an empty index, training the IVF on the whole batch when it is large.

        ``expected_size``: the index will hold this many vectors once the caller has
        added the rest (a bulk load that trains on a sample first): the IVF gets the
        cells for that size, not for the sample's, which would leave each cell ten times
        too full after a 10x larger load and every search scanning ten times as much.
        """
        if len(self):
            raise InvalidInput("ids", f"build() needs an empty index, this one holds {len(self)}")
        if expected_size is not None and expected_size < len(ids):
            raise InvalidInput("expected_size", f"{expected_size!r} is less than the {len(ids)} ids given")
        ids, arr = self.prepare(ids, vectors)
        labels = self._ids.assign_batch(ids)
        if max(len(ids), expected_size or 0) > self.config.exact_max:
            self._build_ivf(labels, arr, expected_size or len(ids))
        else:
            self._index.add_with_ids(arr, labels)

    def compact(self, force: bool = False) -> bool:
        """Re-train the IVF once it outgrew its training; returns whether it rebuilt."""
        n = len(self)
        if self._structure != "ivf" or not (force or n > self.config.retrain_growth * self._trained_for):
            return False
        labels, vecs = self._all_vectors()
        # Renumber while rebuilding: labels of removed items (and their id bytes) go.
        self._ids = self._ids.take(labels)
        self._build_ivf(np.arange(len(labels), dtype=np.int64), vecs, len(labels))
        return True

    # ------------------------------------------------------------------ search
    def search(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The ``k`` most similar items of each query, best first."""
        if k < 1:
            raise InvalidInput("k", f"k must be >= 1, got {k!r}")
        q = self._check_vectors(vectors, "queries")
        if not len(self):
            return [[] for _ in range(q.shape[0])]
        sims, labels = self._index.search(q, min(k, len(self)))
        names = self._ids.ids_of(labels.ravel())
        width = labels.shape[1]
        out: list[list[Hit]] = []
        for r, row_s in enumerate(sims.tolist()):
            row_n = names[r * width : (r + 1) * width]
            out.append([Hit(n, s) for s, n in zip(row_s, row_n, strict=True) if n is not None])
        return out

    def range_search(self, vectors: np.ndarray, threshold: float) -> list[list[Hit]]:
        """Every item with similarity >= ``threshold`` to each query, best first."""
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInput("threshold", f"a cosine threshold is in [-1, 1], got {threshold!r}")
        q = self._check_vectors(vectors, "queries")
        if not len(self):
            return [[] for _ in range(q.shape[0])]
        # FAISS keeps similarities strictly above the radius; step just below to get >=.
        radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
        lims, sims, labels = self._index.range_search(q, radius)
        names = self._ids.mapped_ids(labels)  # FAISS holds mapped labels only
        out: list[list[Hit]] = []
        sims_l = sims.tolist()
        for i in range(q.shape[0]):
            a, b = int(lims[i]), int(lims[i + 1])
            row = [Hit(n, s) for s, n in zip(sims_l[a:b], names[a:b], strict=True)]
            row.sort(key=lambda h: (-h.score, h.id))
            out.append(row)
        return out

    def get_vectors(self, ids: list[str]) -> np.ndarray:
        """Stored vectors of ids (decoded, so approximate under SQ8/fp16)."""
        labels = self._ids.labels_of(list(ids))
        if (labels < 0).any():
            i = int(np.argmax(labels < 0))
            raise InvalidInput(f"ids[{i}]", f"unknown id {ids[i]!r}", "not_found")
        if not len(labels):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(labels)

    # --------------------------------------------------------------- internals
    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        labels = self._ids.alive_labels()
        if not len(labels):
            return labels, np.zeros((0, self.dim), dtype=np.float32)
        return labels, self._index.reconstruct_batch(labels)

    def _nlist_for(self, size: int, training: int) -> int:
        if self.config.nlist is not None:
            return self.config.nlist
        # ~4 sqrt(size) cells, and at least ~39 training points per cell (FAISS's k-means floor).
        by_size = 4 * int(math.sqrt(size))
        return max(1, min(by_size, min(training, self.config.train_sample) // 39))

    def _build_ivf(self, labels: np.ndarray, vecs: np.ndarray, size: int) -> None:
        """Train an IVF for ``size`` vectors on (a sample of) ``vecs`` and add ``vecs``."""
        n = len(labels)
        nlist = self._nlist_for(size, n)
        quantizer = faiss.IndexFlatIP(self.dim)
        qtype = _sq_type(self.config.quantization)
        index: faiss.IndexIVF
        if qtype is None:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, self.dim, nlist, qtype, faiss.METRIC_INNER_PRODUCT
            )
        rng = np.random.default_rng(0)
        sample = vecs
        if n > self.config.train_sample:
            sample = vecs[np.sort(rng.choice(n, self.config.train_sample, replace=False))]
        index.train(np.ascontiguousarray(sample))
        index.add_with_ids(vecs, labels)
        # Shed the inverted lists' growth slack: each list is a std::vector grown by
        # doubling while adding, ~130 bytes a vector at 384-d SQ8 (measured: RSS 585 vs
        # 451 bytes a vector at 300k). A serialise/deserialise round trip re-reads every
        # list at its exact size, at the cost of a transient copy of the index.
        restored = faiss.deserialize_index(faiss.serialize_index(index))
        ivf = faiss.extract_index_ivf(restored)  # a view: ``restored`` owns the index
        ivf.set_direct_map_type(_DIRECT_MAP_HASHTABLE)
        ivf.nprobe = min(self.config.nprobe, nlist)
        self._index = restored
        self._structure = "ivf"
        self._trained_for = size

    def set_nprobe(self, nprobe: int) -> None:
        """Cells searched per query (IVF only): the recall/speed knob."""
        if nprobe < 1:
            raise InvalidInput("nprobe", f"nprobe must be >= 1, got {nprobe!r}")
        if self._structure == "ivf":
            faiss.extract_index_ivf(self._index).nprobe = nprobe

    def memory_bytes(self) -> int:
        """Bytes of the FAISS structure (its serialised size; the id map is extra)."""
        return int(faiss.serialize_index(self._index).size)

    def id_map_bytes(self) -> int:
        """Bytes allocated by the string-id map."""
        return self._ids.memory_bytes()

    # ------------------------------------------------------------- persistence
    def save(self, directory: Path) -> None:
        """Write ``index.faiss``, ``ids.npz`` and ``meta.json`` into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Streamed through FAISS's writer: no in-memory copy of the index (two copies,
        # ~0.8 GB at 1M x 384 SQ8, when it went through serialize_index and bytes).
        write_file_atomic(directory / "index.faiss",
                          lambda f: faiss.write_index(self._index, _callback_writer(f.write)))
        self._ids.save(directory / "ids.npz")
        meta = {
            "format": _FORMAT,
            "config": self.config.model_dump(),
            "structure": self._structure,
            "trained_for": self._trained_for,
        }
        write_json_atomic(directory / "meta.json", meta)
        fsync_dir(directory)

    @classmethod
    def load(cls, directory: Path, config: VectorIndexConfig | None = None) -> VectorIndex:
        """Read what :meth:`save` wrote; ``config`` overrides run-time knobs (nprobe, threads)."""
        directory = Path(directory)
        meta: dict[str, Any] = read_snapshot_meta(directory, _FORMAT)
        saved = VectorIndexConfig.model_validate(meta["config"])
        if config is not None and config.dim != saved.dim:
            raise InvalidInput("dim", f"config dim {config.dim!r} != saved dim {saved.dim!r}")
        self = cls(config or saved)
        self._index = faiss.read_index(str(directory / "index.faiss"))  # from the file, no bytes copy
        self._structure = meta["structure"]
        self._trained_for = int(meta["trained_for"])
        self._ids = IdMap.load(directory / "ids.npz")
        if self._structure == "ivf":
            ivf = faiss.extract_index_ivf(self._index)  # a view: self._index owns the index
            ivf.nprobe = self.config.nprobe
            # The direct map is not serialised as a hashtable in every version; make sure.
            ivf.set_direct_map_type(_DIRECT_MAP_HASHTABLE)
        if self._index.ntotal != len(self._ids):
            raise InvalidInput(
                "index.faiss", f"{self._index.ntotal} vectors but {len(self._ids)} ids in ids.npz"
            )
        return self
