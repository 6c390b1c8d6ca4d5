"""Config models reject bad settings with messages quoting the values."""

from __future__ import annotations

import pydantic
import pytest

from indexes.config import ClusteringConfig, IndexesConfig, VectorIndexConfig


def test_defaults_load() -> None:
    c = IndexesConfig()
    assert c.pdq.threshold == 31 and c.vector.dim == 384 and c.thresholds.image_pdq == 31


def test_bad_settings_are_rejected_with_values() -> None:
    with pytest.raises(pydantic.ValidationError) as e:
        ClusteringConfig(threshold=0.9, guard_threshold=0.8)
    assert "0.8" in str(e.value) and "0.9" in str(e.value)
    with pytest.raises(pydantic.ValidationError):
        VectorIndexConfig(quantization="pq")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        VectorIndexConfig(nprobe=0)
    with pytest.raises(pydantic.ValidationError):
        IndexesConfig.model_validate({"vector": {"dimm": 3}})
