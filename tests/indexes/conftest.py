"""Shared data makers for the index tests: random and clustered unit vectors, PDQ hashes."""

from __future__ import annotations

import numpy as np
import pytest


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def clustered_vectors(n: int, d: int, seed: int = 0, per: int = 20, spread: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((max(1, n // per), d)))
    c = rng.integers(0, len(centers), n)
    return unit(centers[c] + spread * rng.standard_normal((n, d)) / np.sqrt(d))


def flip_bits(h: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(h)
    bits[rng.choice(256, k, replace=False)] ^= 1
    return np.packbits(bits)


@pytest.fixture(params=["random", "clustered"])
def data(request: pytest.FixtureRequest) -> np.ndarray:
    if request.param == "random":
        return random_vectors(3000, 32, seed=1)
    return clustered_vectors(3000, 32, seed=2)
