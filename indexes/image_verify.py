"""Geometric verification of an image pair: are these the same pixels, moved?

Two images are a copy when many of their local features (``image_local``, ORB, see
:mod:`signals.image_local`) match, one transform (crop, scale, rotation, aspect
change, skew, mirror) maps the matches onto each other, and the matches are dense
where the two images overlap. Another product photographed the same way shares a pose
and a white background but not the pixels: its matches do not agree on one transform,
or (one model's head composited over another garment) agree only on a small part.

:func:`verify_pair` matches the first image's features (and those of its mirror
image) against the second's with a ratio test, fits an affine transform with RANSAC
(OpenCV, deterministic: its RANSAC draws from a fixed-seed generator), and reports
the better of the two sets. The direction matters a little (RANSAC samples the first
image's matches), so callers verify a pair in one canonical order. The caller decides
with :meth:`Verification.accepted`; the thresholds are ``NearDuplicateConfig``'s
(:meth:`indexes.near_duplicates.ImageNearDuplicates.accepts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from signals.image_local import unpack_local_features


@dataclass(frozen=True)
class Verification:
    """The best geometric agreement found between two images."""

    inliers: int  # matches the fitted transform explains
    matches: int  # matches that passed the ratio test (the RANSAC input)
    mirrored: bool  # found between the first image's mirror and the second
    spread: float  # the smaller of the two images' sqrt(inliers' hull area / keypoint box)
    density: float = 0.0  # inliers / the keypoints where the images overlap (the better direction)

    def accepted(self, min_inliers: int, min_spread: float, min_density: float = 0.0) -> bool:
        return self.inliers >= min_inliers and self.spread >= min_spread and self.density >= min_density


NO_MATCH = Verification(0, 0, False, 0.0, 0.0)


def verify_pair(a: np.ndarray, b: np.ndarray, ratio: float = 0.8, reprojection_px: float = 6.0,
                max_scale: float = 8.0, min_matches: int = 6) -> Verification:
    """The geometric agreement of two stored ``image_local`` blocks (``a`` mirrored or not).

    Matches with a ratio test, drops matches that pile onto one spot (ORB finds the same
    corner at several pyramid levels; a pile would let RANSAC fit a collapsed transform),
    fits an affine transform (6 degrees of freedom: crop, scale, rotation, aspect change,
    skew, mirror; a photo's mild perspective stays within ``reprojection_px`` of it) and
    rejects a transform no copy undergoes (collapsing or exploding the image, or squashing
    it more than ``max_scale`` in one direction). Fewer than ``min_matches`` matches are
    not worth a RANSAC.
    """
    import cv2

    pts_b, desc_b = unpack_local_features(b, mirror=False)
    if len(desc_b) < 4:
        return NO_MATCH
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    best = NO_MATCH
    for mirrored in (False, True):
        pts_a, desc_a = unpack_local_features(a, mirror=mirrored)
        if len(desc_a) < 4:
            continue
        pairs = matcher.knnMatch(desc_a, desc_b, k=2)
        good = [(p[0].queryIdx, p[0].trainIdx) for p in pairs
                if len(p) == 2 and p[0].distance < ratio * p[1].distance]
        src, dst = _distinct(pts_a, pts_b, good)
        v = Verification(0, len(src), mirrored, 0.0)
        if len(src) >= min_matches:
            m, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                           ransacReprojThreshold=reprojection_px, maxIters=2000,
                                           confidence=0.995, refineIters=10)
            if m is not None and mask is not None and _plausible(m, max_scale):
                inl = mask.ravel().astype(bool)
                n_in = int(inl.sum())
                v = Verification(n_in, len(src), mirrored,
                                 min(_spread(src[inl], pts_a), _spread(dst[inl], pts_b)),
                                 _density(n_in, m, pts_a, pts_b))
        best = max(best, v, key=_rank)
    return best


def _distinct(pts_a: np.ndarray, pts_b: np.ndarray, good: list[tuple[int, int]]
              ) -> tuple[np.ndarray, np.ndarray]:
    """The matched points, at most one match per 4-pixel spot on either side."""
    if not good:
        z = np.zeros((0, 2), dtype=np.float32)
        return z, z
    qi = np.array([g[0] for g in good])
    ti = np.array([g[1] for g in good])
    src, dst = pts_a[qi], pts_b[ti]
    key_a = np.round(src / 4.0).astype(np.int64)
    key_b = np.round(dst / 4.0).astype(np.int64)
    _, first_a = np.unique(key_a[:, 0] * 100_003 + key_a[:, 1], return_index=True)
    keep = np.zeros(len(good), dtype=bool)
    keep[first_a] = True
    kb = (key_b[:, 0] * 100_003 + key_b[:, 1])[keep]
    idx = np.flatnonzero(keep)
    _, first_b = np.unique(kb, return_index=True)
    sel = np.sort(idx[first_b])
    return np.ascontiguousarray(src[sel]), np.ascontiguousarray(dst[sel])


def _rank(v: Verification) -> tuple[int, int]:
    return (v.inliers, v.matches)


def _plausible(m: np.ndarray, max_scale: float) -> bool:
    """An affine map a copy could have undergone: no collapse, explosion or extreme squash."""
    if not np.all(np.isfinite(m)):
        return False
    sv = np.linalg.svd(m[:2, :2], compute_uv=False)
    lo, hi = float(sv.min()), float(sv.max())
    return lo >= 1.0 / max_scale and hi <= max_scale and hi <= 3.0 * lo


def _density(inliers: int, m: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> float:
    """Inliers per keypoint where the two images overlap, in the better of the two directions.

    The overlap: the other image's keypoint box mapped through the transform. A copy
    matches densely there (all of a crop lies inside its original; a collage tile is all
    of its photo); two photos that share only some pixels (the same model's head and
    hands composited onto another garment, a shared logo) match sparsely inside a large
    overlap whose other keypoints find nothing.
    """
    import cv2

    inverse = cv2.invertAffineTransform(m)
    best = 0.0
    for fwd, src, dst in ((m, pts_a, pts_b), (inverse, pts_b, pts_a)):
        lo, hi = src.min(axis=0), src.max(axis=0)
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]], dtype=np.float64)
        quad = corners @ fwd[:, :2].T + fwd[:, 2]
        inside = _inside_quad(dst.astype(np.float64), quad)
        best = max(best, inliers / max(1, int(inside.sum())))
    return float(min(1.0, best))


def _inside_quad(pts: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Points inside a convex quadrilateral (either winding)."""
    signs = []
    for k in range(4):
        p, q = quad[k], quad[(k + 1) % 4]
        signs.append((q[0] - p[0]) * (pts[:, 1] - p[1]) - (q[1] - p[1]) * (pts[:, 0] - p[0]))
    s = np.stack(signs)
    return np.all(s >= 0, axis=0) | np.all(s <= 0, axis=0)


def _spread(inliers: np.ndarray, all_pts: np.ndarray) -> float:
    """sqrt(area of the inliers' convex hull / area of the bounding box of all keypoints)."""
    import cv2

    if len(inliers) < 3 or len(all_pts) < 3:
        return 0.0
    hull = cv2.convexHull(inliers.astype(np.float32))
    area = float(cv2.contourArea(hull))
    span = all_pts.max(axis=0) - all_pts.min(axis=0)
    total = float(span[0] * span[1])
    return float(np.sqrt(area / total)) if total > 0 else 0.0
