"""Shared fixtures of the signals tests.

The MiniLM ONNX export costs tens of seconds, so the whole session shares one,
cached like production under ``./var/models`` (git-ignored): repeated test runs
reuse it, and a changed export recipe gets a new file name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MODELS_DIR = Path(__file__).resolve().parents[2] / "var" / "models"


@pytest.fixture(scope="session")
def minilm_onnx_cache() -> Path:
    """The cache folder, holding the exported fp32 and int8 MiniLM graphs."""
    from signals.onnx_export import ensure_exported
    from signals.text_embedding import default_model_dir

    ensure_exported(default_model_dir(), MODELS_DIR, "minilm", threads=2)
    return MODELS_DIR
