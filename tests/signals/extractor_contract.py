"""The shared contract every extractor passes.

Subclass :class:`ExtractorContract` in the extractor's own test module, implement
``make_extractor`` and ``good_items`` (and ``bad_items`` where the extractor can
refuse an item), and every test below runs against that extractor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from signals.catalogue import CATALOGUE
from signals.extractor import Extractor, ItemResult
from signals.schemas import Listing, Review


class ExtractorContract:
    """Base class of the per-extractor contract tests (not collected on its own)."""

    # Feature vectors this extractor returns L2-normalised (checked to 1e-3).
    unit_features: ClassVar[tuple[str, ...]] = ()
    # Features holding one row per listing image (first axis: the image, in
    # ``listing.images`` order): (n_images, d) matrices, (n_images,) per-image scalars, or
    # blocks per image ((n_images, regions, d)); unit features are unit along the last axis.
    # Every other feature is one 1-D vector per item.
    per_image_features: ClassVar[tuple[str, ...]] = ()
    # Features that are packed binary hashes (uint8, e.g. PDQ) rather than float32 vectors.
    hash_features: ClassVar[tuple[str, ...]] = ()

    def make_extractor(self) -> Extractor:
        raise NotImplementedError

    def good_items(self) -> Sequence[Listing | Review]:
        """At least three valid items of a kind the extractor accepts."""
        raise NotImplementedError

    def bad_items(self) -> Sequence[Listing | Review]:
        """Items the extractor must answer with an error result (may be none)."""
        return []

    @pytest.fixture(scope="class")
    @classmethod
    def extractor(cls) -> Extractor:
        # Built once per test class: real extractors load models.
        return cls().make_extractor()

    def test_declares_itself(self, extractor: Extractor) -> None:
        assert extractor.name and extractor.name.replace("_", "").isalnum()
        assert isinstance(extractor.version, int) and extractor.version >= 1
        assert set(extractor.accepts) <= {"listing", "review"} and extractor.accepts
        assert extractor.emits or extractor.features, "an extractor must emit something"
        for name in extractor.emits:
            assert name in CATALOGUE, name

    def test_empty_batch(self, extractor: Extractor) -> None:
        assert extractor.extract_batch([]) == []

    def test_one_result_per_item_in_order(self, extractor: Extractor) -> None:
        items = list(self.good_items())
        assert len(items) >= 3
        results = extractor.extract_batch(items)
        assert [r.entity_id for r in results] == [i.entity_id for i in items]
        for item, r in zip(items, results, strict=True):
            assert r.ok, r.error
            self._check_result(extractor, r, item)

    def test_signals_are_declared_and_attributed(self, extractor: Extractor) -> None:
        items = list(self.good_items())
        for item, r in zip(items, extractor.extract_batch(items), strict=True):
            for s in r.signals:
                assert s.name in extractor.emits
                assert s.source == f"{extractor.name}@{extractor.version}"
                assert s.tenant == item.tenant
                assert s.entity_type in CATALOGUE[s.name].entity_types

    def test_batch_equals_singles(self, extractor: Extractor) -> None:
        items = list(self.good_items())
        batch = extractor.extract_batch(items)
        for item, b in zip(items, batch, strict=True):
            single = extractor.extract(item)
            assert _signal_view(single) == _signal_view(b)
            assert single.features.keys() == b.features.keys()
            for k in b.features:
                np.testing.assert_allclose(single.features[k], b.features[k], atol=2e-3)

    def test_bad_item_does_not_fail_its_batch(self, extractor: Extractor) -> None:
        good = list(self.good_items())
        for bad in self.bad_items():
            results = extractor.extract_batch([good[0], bad, good[1]])
            assert [r.entity_id for r in results] == [good[0].entity_id, bad.entity_id,
                                                      good[1].entity_id]
            assert results[0].ok and results[2].ok
            assert not results[1].ok and results[1].error.reason

    def test_unexpected_failure_is_isolated(self, extractor: Extractor,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """A crash inside the extractor on one item gives that item an error result only."""
        items = list(self.good_items())
        victim = items[1].entity_id
        real = type(extractor)._extract_batch

        def flaky(self_: Extractor, batch, observed_at):  # type: ignore[no-untyped-def]
            if any(i.entity_id == victim for i in batch):
                raise RuntimeError("boom")
            return real(self_, batch, observed_at)

        monkeypatch.setattr(type(extractor), "_extract_batch", flaky)
        results = extractor.extract_batch(items)
        assert [r.ok for r in results] == [i.entity_id != victim for i in items]
        assert results[1].error is not None and "boom" in results[1].error.reason

    def _check_result(self, extractor: Extractor, r: ItemResult,
                      item: Listing | Review | None = None) -> None:
        assert set(r.features) <= set(extractor.features)
        for name, vec in r.features.items():
            if name in self.hash_features:
                assert vec.dtype == np.uint8, (name, vec.dtype)
            else:
                assert vec.dtype == np.float32 and np.isfinite(vec).all(), name
            if name in self.per_image_features:
                # (n_images,), (n_images, d), or blocks per image such as (n_images, regions, d)
                assert vec.ndim >= 1 and vec.shape[0] >= 1, (name, vec.shape)
                if isinstance(item, Listing):
                    assert vec.shape[0] == len(item.images), (name, vec.shape)
                rows = vec.reshape(-1, vec.shape[-1]) if vec.ndim > 1 else vec.reshape(vec.shape[0], -1)
            else:
                assert vec.ndim == 1, (name, vec.shape)
                rows = vec.reshape(1, -1)
            if name in self.unit_features:
                norms = np.linalg.norm(rows.astype(np.float64), axis=1)
                assert np.all(np.abs(norms - 1.0) < 1e-3), (name, norms)


def _signal_view(r: ItemResult) -> list[tuple]:
    return sorted((s.entity_type, s.entity_id, s.name, s.value, s.score) for s in r.signals)
