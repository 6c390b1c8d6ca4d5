"""Local features of listing images (ORB keypoints), stored so a copy can be verified geometrically.

A global descriptor (SSCD) cannot tell a cropped, rotated or collaged copy of a
photo from another product shot the same way (issue 16: no single cut on its
cosine reaches precision 0.995). Whether the *pixels* are the same can: the two
images share many local features that one geometric transform maps onto each
other. This module computes the features; :mod:`indexes.image_verify` decides.

Per image, ``image_local`` is one ``(2, K, 36)`` uint8 block (``K`` =
``LocalFeaturesConfig.keypoints``, 256 by default: 18,432 bytes an image):

* set 0: up to ``K`` ORB keypoints of the image, set 1: up to ``K`` of its left-right
  mirror image (so a mirrored copy matches: ORB descriptors are not mirror-invariant),
  each in its own frame;
* a row is ``x, y`` (uint16 little-endian, pixels x 64 in the working frame), then
  the 32-byte ORB descriptor; unused rows have ``x = y = 0xFFFF``.

The working frame: the image with its frame (padding, letterboxing, screenshot
chrome) trimmed by :func:`signals.image_decode.trim_borders`, greyscale, resized so
that its longer side is ``max_side`` (512; small images are enlarged, so an image and
its downsized copy are compared at one scale). Keypoints are spread over an 8 x 8
grid (every cell's strongest first, then every cell's second, ...), so neither a
text overlay or banner, whose sharp corners outscore the photo's, nor the other
tiles of a collage take every keypoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

import numpy as np

from signals.config import LocalFeaturesConfig
from signals.extractor import ItemResult
from signals.image_decode import DecodedImage, ImageDecoder, trim_borders
from signals.image_extractor import ImageExtractor
from signals.schemas import Listing

ROW_BYTES = 36  # x, y as uint16, then 32 descriptor bytes
DESCRIPTOR_BYTES = 32
COORD_SCALE = 64.0
EMPTY = 0xFFFF
_GRID = 8
_COARSE_OCTAVE = 3  # ORB pyramid levels 3+ (scale 1.2^3 = 1.7 and coarser)


def empty_local_features(keypoints: int) -> np.ndarray:
    """A block with no keypoint (a flat image): ``(2, keypoints, 36)``."""
    out = np.zeros((2, keypoints, ROW_BYTES), dtype=np.uint8)
    out[:, :, :4] = 0xFF
    return out


def unpack_local_features(block: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(points (n, 2) float32, descriptors (n, 32) uint8)`` of one set of a stored block."""
    rows = np.asarray(block[1 if mirror else 0], dtype=np.uint8)
    xy = rows[:, :4].copy().view("<u2").reshape(-1, 2)
    valid = ~((xy[:, 0] == EMPTY) & (xy[:, 1] == EMPTY))
    return (xy[valid].astype(np.float32) / COORD_SCALE,
            np.ascontiguousarray(rows[valid, 4:]))


class LocalFeatureComputer:
    """ORB keypoints of an RGB array, spread over a grid, for the image and its mirror."""

    def __init__(self, config: LocalFeaturesConfig) -> None:
        import cv2

        self.config = config
        self._cv2 = cv2
        # Detect more than kept: the grid then chooses. fastThreshold lower than the default
        # (20) so that smooth product photos on white still give corners.
        self._orb = cv2.ORB.create(nfeatures=config.keypoints * 8, scaleFactor=1.2, nlevels=8,
                                   edgeThreshold=15, patchSize=31, fastThreshold=10)

    def working_frame(self, rgb: np.ndarray) -> np.ndarray:
        """The trimmed, greyscale, resized image the keypoints are found in."""
        cv2 = self._cv2
        inner = trim_borders(rgb)
        grey = cv2.cvtColor(np.ascontiguousarray(inner), cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        scale = self.config.max_side / max(h, w)
        if scale != 1.0:
            grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)
        return np.ascontiguousarray(grey)

    def compute(self, rgb: np.ndarray) -> np.ndarray:
        """One image's ``(2, K, 36)`` block (see the module docstring)."""
        grey = self.working_frame(rgb)
        out = empty_local_features(self.config.keypoints)
        if min(grey.shape) < 16:
            return out
        for s, img in enumerate((grey, np.ascontiguousarray(grey[:, ::-1]))):
            out[s] = self._one_set(img)
        return out

    def _one_set(self, grey: np.ndarray) -> np.ndarray:
        k = self.config.keypoints
        rows = np.zeros((k, ROW_BYTES), dtype=np.uint8)
        rows[:, :4] = 0xFF
        pts, response, octave, desc = self._detect(grey, None)
        # Sharp overlaid text (a banner, a phone number) outscores the photo's own corners and
        # can take every keypoint ORB keeps; a second pass looks only where cells are short.
        quota = max(1, k // (_GRID * _GRID))
        short = _cell_counts(pts, grey.shape) < quota
        if short.any() and len(pts) >= k:
            h, w = grey.shape
            mask = np.kron(short.reshape(_GRID, _GRID).astype(np.uint8) * 255,
                           np.ones((-(-h // _GRID), -(-w // _GRID)), dtype=np.uint8))[:h, :w]
            more = self._detect(grey, np.ascontiguousarray(mask))
            pts, response, octave, desc = (np.concatenate([x, y]) for x, y in
                                           zip((pts, response, octave, desc), more, strict=True))
        if not len(pts):
            return rows
        # Half the budget from the fine pyramid levels, half from the coarse ones: a copy at
        # twice the scale (a crop to half) or half of it (a collage tile) then still meets
        # keypoints of the other at its own scale.
        coarse = octave >= _COARSE_OCTAVE
        parts = []
        for band, want in ((~coarse, k - k // 2), (coarse, k // 2)):
            idx = np.flatnonzero(band)
            parts.append(idx[_spread(pts[idx], response[idx], grey.shape, want)])
        keep = np.sort(np.concatenate(parts))
        if len(keep) < k:  # one band short: the other fills the budget
            rest = np.setdiff1d(np.arange(len(pts)), keep)
            keep = np.sort(np.concatenate([keep, rest[_spread(pts[rest], response[rest], grey.shape,
                                                              k - len(keep))]]))
        xy = np.clip(np.round(pts[keep] * COORD_SCALE), 0, EMPTY - 1).astype("<u2")
        rows[:len(keep), :4] = xy.view(np.uint8).reshape(len(keep), 4)
        rows[:len(keep), 4:] = desc[keep]
        return rows

    def _detect(self, grey: np.ndarray, mask: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(points, responses, pyramid levels, descriptors) of ORB's keypoints."""
        kps, desc = self._orb.detectAndCompute(grey, mask)
        if desc is None or not len(kps):
            return (np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.float32),
                    np.zeros(0, dtype=np.int64), np.zeros((0, DESCRIPTOR_BYTES), dtype=np.uint8))
        return (np.array([kp.pt for kp in kps], dtype=np.float32),
                np.array([kp.response for kp in kps], dtype=np.float32),
                np.array([kp.octave for kp in kps], dtype=np.int64), np.asarray(desc, dtype=np.uint8))


def _cells(pts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[:2]
    cx = np.minimum((pts[:, 0] * _GRID / max(w, 1)).astype(np.int64), _GRID - 1)
    cy = np.minimum((pts[:, 1] * _GRID / max(h, 1)).astype(np.int64), _GRID - 1)
    return cy * _GRID + cx


def _cell_counts(pts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.bincount(_cells(pts, shape), minlength=_GRID * _GRID)


def _spread(pts: np.ndarray, response: np.ndarray, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Up to ``k`` keypoint indices: the strongest of each grid cell in turn, round-robin."""
    cell = _cells(pts, shape)
    order = np.lexsort((-response, cell))  # by cell, strongest first within a cell
    cell_sorted = cell[order]
    starts = np.searchsorted(cell_sorted, cell_sorted, side="left")
    rank = np.arange(len(order)) - starts  # rank of each keypoint within its cell
    # Round-robin: every cell's best, then every cell's second best, ...; ties by strength.
    pick = np.lexsort((-response[order], rank))[:k]
    return np.sort(order[pick])


class LocalFeatureExtractor(ImageExtractor[np.ndarray]):
    """``image_local``: ``(n_images, 2, K, 36)`` uint8 ORB features (image, mirror) per listing."""

    name: ClassVar[str] = "image_local"
    version: ClassVar[int] = 1
    features: ClassVar[tuple[str, ...]] = ("image_local",)
    per_image_features: ClassVar[tuple[str, ...]] = features

    def __init__(self, decoder: ImageDecoder, config: LocalFeaturesConfig) -> None:
        super().__init__(decoder)
        self.computer = LocalFeatureComputer(config)

    def _run(self, images: Sequence[DecodedImage]) -> list[np.ndarray]:
        return [self.computer.compute(im.rgb) for im in images]

    def _assemble(self, item: Listing, images: Sequence[DecodedImage],
                  outputs: Sequence[np.ndarray], observed_at: datetime) -> ItemResult:
        if not images:
            return ItemResult(item.entity_id)
        return ItemResult(item.entity_id, features={"image_local": np.stack(outputs)})
