"""``benchmarks.review_writes``: each scenario writes what it says through the engine (no timing)."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.review_writes import run
from tests.serving.conftest import MODELS_DIR


def test_the_scenarios_fill_what_they_name(tmp_path: Path) -> None:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    os.symlink(MODELS_DIR, tmp_path / "models")
    out = run(tmp_path, big=30, heavy=5, writes=3)
    assert out["small"]["prefill_reviews"] == 30 and out["big_product"]["prefill_reviews"] == 30
    assert out["heavy_reviewer"]["prefill_reviews"] == 5 * 10
    for name in ("small", "big_product", "heavy_reviewer"):
        assert out[name]["writes"] == 3 and 0 < out[name]["p50_ms"] <= out[name]["p95_ms"]
        assert out[f"p50_ms_{name}"] == out[name]["p50_ms"]
    assert out["heavy_reviewer"]["ring_partners"] >= 5  # the group search runs on its writes
    # the engine kept every write: the heavy account's count is its prefill and the measured writes
    from serving.config import MarketGuardConfig
    from serving.deployments.catalogue import open_store

    store = open_store(MarketGuardConfig.model_validate({"data_dir": str(tmp_path)}))
    try:
        assert len(store.items_of_owner("default", "review", "HEAVY")) == 5 + 3
        assert len(store.items_of_group("default", "review", "BIG")) == 30 + 3
    finally:
        store.close()
