"""The extractor base (failure isolation) and the registry's start-up checks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

import numpy as np
import pytest

from signals.extractor import Extractor, ItemResult
from signals.registry import ExtractorRegistry
from signals.schemas import Listing, RecordKind
from tests.signals.extractor_contract import ExtractorContract


class UppercaseShare(Extractor[Listing]):
    """A toy extractor: share of upper-case letters, plus a 2-d feature; fails on 'FAIL'."""

    name: ClassVar[str] = "uppercase_share"
    version: ClassVar[int] = 1
    accepts: ClassVar[tuple[RecordKind, ...]] = ("listing",)
    emits: ClassVar[tuple[str, ...]] = ("content.obfuscation",)
    features: ClassVar[tuple[str, ...]] = ("toy",)

    def __init__(self) -> None:
        self.batches: list[int] = []

    def _extract_batch(self, items: Sequence[Listing], observed_at: datetime) -> list[ItemResult]:
        self.batches.append(len(items))
        out = []
        for item in items:
            if item.title == "FAIL":
                raise ValueError("cannot handle this title")
            letters = [c for c in item.title if c.isalpha()]
            share = sum(c.isupper() for c in letters) / max(1, len(letters))
            vec = np.array([share, 1.0 - share], dtype=np.float32)
            out.append(ItemResult(item.entity_id, signals=[
                self.signal(item, "content.obfuscation", share, observed_at, score=share)],
                features={"toy": vec / np.linalg.norm(vec)}))
        return out


def _listing(i: int, title: str) -> Listing:
    return Listing(listing_id=f"L{i}", seller_id="S1", title=title, tenant="t1")


class TestUppercaseShareContract(ExtractorContract):
    """The shared contract, run on the toy extractor: it checks the contract itself works."""

    unit_features = ("toy",)

    def make_extractor(self) -> Extractor:
        return UppercaseShare()

    def good_items(self) -> list[Listing]:
        return [_listing(1, "hello"), _listing(2, "HELLO"), _listing(3, "HeLLo")]

    def bad_items(self) -> list[Listing]:
        return [_listing(9, "FAIL")]


def test_failure_retries_item_by_item_and_names_the_error() -> None:
    ex = UppercaseShare()
    res = ex.extract_batch([_listing(1, "a"), _listing(2, "FAIL"), _listing(3, "B")])
    assert ex.batches == [3, 1, 1, 1]  # whole batch first, then one at a time
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].error is not None and res[1].error.extractor == "uppercase_share"
    assert "cannot handle this title" in res[1].error.reason
    assert res[2].signals[0].value == 1.0


def test_signal_must_be_declared() -> None:
    ex = UppercaseShare()
    with pytest.raises(ValueError, match="does not declare"):
        ex.signal(_listing(1, "x"), "price.anomaly", 1.0, datetime.now().astimezone())


def test_wrong_result_count_is_an_error_per_item() -> None:
    class Short(UppercaseShare):
        def _extract_batch(self, items, observed_at):  # type: ignore[no-untyped-def]
            return super()._extract_batch(items, observed_at)[:1]

    res = Short().extract_batch([_listing(1, "a"), _listing(2, "b")])
    # Singles return one result each, so the retry recovers both.
    assert [r.ok for r in res] == [True, True]


def test_registry_merges_per_record() -> None:
    reg = ExtractorRegistry([UppercaseShare()])
    out = reg.extract_batch("listing", [_listing(1, "ab"), _listing(2, "FAIL")])
    assert [r.entity_id for r in out] == ["L1", "L2"]
    assert out[0].signals[0].name == "content.obfuscation" and "toy" in out[0].features
    assert out[1].signals == [] and out[1].errors[0].extractor == "uppercase_share"
    assert reg.for_kind("review") == []
    assert reg.for_kind("listing", signals_only=True)


def test_registry_rejects_duplicates_and_unknown_signals() -> None:
    with pytest.raises(ValueError, match="unique"):
        ExtractorRegistry([UppercaseShare(), UppercaseShare()])

    class Rogue(UppercaseShare):
        name = "rogue"
        emits = ("content.made_up",)

    with pytest.raises(ValueError, match="not in the catalogue"):
        ExtractorRegistry([Rogue()])

    class SameFeature(UppercaseShare):
        name = "same_feature"

    with pytest.raises(ValueError, match="feature 'toy'"):
        ExtractorRegistry([UppercaseShare(), SameFeature()])


def test_retry_never_loses_or_misattributes_an_item() -> None:
    class DropsOne(UppercaseShare):
        """Fails on batches, and silently returns nothing for the title 'skip'."""

        def _extract_batch(self, items, observed_at):  # type: ignore[no-untyped-def]
            if len(items) > 1:
                raise RuntimeError("batch path broken")
            if items[0].title == "skip":
                return []
            return super()._extract_batch(items, observed_at)

    res = DropsOne().extract_batch([_listing(1, "a"), _listing(2, "skip"), _listing(3, "b")])
    assert [r.entity_id for r in res] == ["L1", "L2", "L3"]
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].error is not None and "0 results" in res[1].error.reason


def test_results_out_of_order_are_not_trusted() -> None:
    class Reversed(UppercaseShare):
        def _extract_batch(self, items, observed_at):  # type: ignore[no-untyped-def]
            return list(reversed(super()._extract_batch(items, observed_at)))

    res = Reversed().extract_batch([_listing(1, "ab"), _listing(2, "CD")])
    # The mismatch sends the batch item by item, where each result is its own item's.
    assert [r.entity_id for r in res] == ["L1", "L2"]
    assert [r.signals[0].value for r in res] == [0.0, 1.0]
