"""Shared fixtures of the serving tests: one local Ray for the whole session, a models cache.

Ray starts once per test session (seconds on two cores), with more logical CPUs than
cores so the batch job's extractor actors never starve its read tasks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

MODELS_DIR = Path(__file__).resolve().parents[2] / "var" / "models"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """A local Ray shared by the session; yields its address for subprocess drivers."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh state folder whose models/ is the session-wide export cache."""
    d = tmp_path / "state"
    d.mkdir()
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    os.symlink(MODELS_DIR, d / "models")
    return d
