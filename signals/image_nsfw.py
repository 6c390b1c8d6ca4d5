"""Nudity detection in listing images with NudeNet's ``320n.onnx`` (deep tier).

The graph ships inside the ``nudenet`` package (nothing is downloaded). It is a
YOLOv8 detector: input ``images`` float32 NCHW RGB in [0, 1], 320x320; output
``(batch, 4 + n_classes, anchors)`` with a box and per-class scores per anchor.
Class names are read from the graph's own ``names`` metadata, so a different
local model (config ``model_path``) brings its own labels.

We run the session ourselves rather than through ``NudeDetector``: explicit
thread settings, batching, our already-decoded pixels (NudeDetector decodes
again with OpenCV), and no box post-processing, because the signal needs only the
highest score of each class (non-maximum suppression never changes a class's
maximum). Preprocessing reproduces NudeDetector's exactly (see ``preprocess``).

Signal ``image.nsfw`` per listing: value and score are the highest score of an
*exposed* class over the listing's images; evidence lists, per image, every class
scoring at least ``min_score``.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from signals.config import NsfwConfig
from signals.extractor import ItemResult
from signals.image_decode import DecodedImage, ImageDecoder
from signals.image_extractor import ImageExtractor
from signals.schemas import Listing

# The classes that make an image unsafe for a marketplace; the others (faces, covered
# body parts, feet, belly) are reported as evidence only.
NSFW_CLASSES: frozenset[str] = frozenset({
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
})


def default_model_path() -> Path:
    try:
        import nudenet
    except ImportError as exc:  # pragma: no cover - an install problem, reported clearly
        raise RuntimeError("NSFW detection needs the nudenet package: pip install nudenet") from exc
    return Path(nudenet.__file__).resolve().parent / "320n.onnx"


class NsfwDetector:
    """NudeNet's detector on onnxruntime: RGB arrays in, per-class max scores out."""

    def __init__(self, model_path: Path, threads: int = 2, batch_size: int = 8) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(model_path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            names = ast.literal_eval(meta["names"])
            self.labels: tuple[str, ...] = tuple(names[i] for i in range(len(names)))
            size = ast.literal_eval(meta.get("imgsz", "[320, 320]"))
        except (KeyError, ValueError, SyntaxError) as exc:
            raise ValueError(f"{model_path}: no usable 'names' metadata; not a NudeNet graph?") \
                from exc
        self.size = int(size[0])
        self.batch_size = batch_size
        self._input = self.session.get_inputs()[0].name

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB -> (3, size, size) float32, exactly as NudeDetector prepares it.

        NudeDetector pads right and bottom with black to a square, resizes with OpenCV's
        bilinear filter and scales to [0, 1]; its colour conversions leave the channels in
        BGR order, and the published scores (and thresholds people use) come from that
        input, so we feed BGR too. Checked against ``NudeDetector.detect``: same scores.
        """
        import cv2

        h, w = rgb.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 3), dtype=np.uint8)
        square[:h, :w] = rgb[:, :, ::-1]
        small = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32) / 255.0

    def class_scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(images), n_classes)`` float32: each class's highest score in each image."""
        out = np.zeros((len(images), len(self.labels)), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.stack([self.preprocess(im) for im in chunk])
            raw = self.session.run(None, {self._input: batch})[0]  # (b, 4 + C, anchors)
            out[start:start + len(chunk)] = raw[:, 4:4 + len(self.labels), :].max(axis=2)
        return out


def build_nsfw_detector(config: NsfwConfig) -> NsfwDetector:
    path = Path(config.model_path) if config.model_path else default_model_path()
    return NsfwDetector(path, config.threads)


class NsfwExtractor(ImageExtractor[np.ndarray]):
    """``image.nsfw``: the strongest exposed-nudity detection over a listing's images."""

    name: ClassVar[str] = "image_nsfw"
    version: ClassVar[int] = 1
    emits: ClassVar[tuple[str, ...]] = ("image.nsfw",)
    tier: ClassVar[Literal["fast", "deep"]] = "deep"

    def __init__(self, decoder: ImageDecoder, detector: NsfwDetector, min_score: float = 0.25) -> None:
        super().__init__(decoder)
        self.detector = detector
        self.min_score = min_score
        self._nsfw_idx = [i for i, n in enumerate(detector.labels) if n in NSFW_CLASSES]

    def _run(self, images: Sequence[DecodedImage]) -> list[np.ndarray]:
        return list(self.detector.class_scores([im.rgb for im in images]))

    def _assemble(self, item: Listing, images: Sequence[DecodedImage],
                  outputs: Sequence[np.ndarray], observed_at: datetime) -> ItemResult:
        if not images:
            return ItemResult(item.entity_id)
        labels = self.detector.labels
        top = 0.0
        per_image: list[dict[str, Any]] = []
        for im, scores in zip(images, outputs, strict=True):
            if self._nsfw_idx:
                top = max(top, float(scores[self._nsfw_idx].max()))
            found = {labels[j]: round(float(scores[j]), 4) for j in np.argsort(-scores)
                     if scores[j] >= self.min_score}
            if found:
                per_image.append({"image": im.index, "classes": found})
        value = round(top, 4)
        sig = self.signal(item, "image.nsfw", value, observed_at, score=value,
                          evidence={"images": per_image})
        return ItemResult(item.entity_id, signals=[sig])
