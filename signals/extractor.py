"""The extractor interface: batch-first, one bad item never fails its batch.

An extractor owns its loaded models. Its core is ``_extract_batch(items)``; the
public ``extract_batch`` wraps it so that an exception on one item turns into an
error result for that item while the rest of the batch goes on. The same object
serves the HTTP path (``@serve.batch``), Ray Data's ``map_batches`` and the CLI.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from signals.errors import ErrorCode, InvalidInput
from signals.schemas import EntityType, Listing, RecordKind, Review, Signal, SignalValue

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT", Listing, Review)


@dataclass(frozen=True)
class ItemError:
    """Why one item could not be processed by one extractor."""

    extractor: str
    reason: str
    field: str | None = None
    code: ErrorCode | str = "invalid"

    def to_dict(self) -> dict[str, Any]:
        return {"extractor": self.extractor, "code": self.code, "field": self.field,
                "message": self.reason}


@dataclass
class ItemResult:
    """What one extractor produced for one item: signals, feature vectors, or an error."""

    entity_id: str
    signals: list[Signal] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    error: ItemError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Extractor(ABC, Generic[ItemT]):
    """Base of every extractor. Subclasses set the class attributes and ``_extract_batch``.

    - ``name``/``version``: the signal ``source`` is ``f"{name}@{version}"``; bump the
      version whenever the meaning of an emitted value changes.
    - ``accepts``: the record kinds it reads.
    - ``emits``: signal names (all in :data:`signals.catalogue.CATALOGUE`).
    - ``features``: names of feature vectors it puts in ``ItemResult.features``.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    accepts: ClassVar[tuple[RecordKind, ...]]
    emits: ClassVar[tuple[str, ...]] = ()
    features: ClassVar[tuple[str, ...]] = ()
    # "deep": slow (OCR, NSFW); serving may run it asynchronously, after the fast answer.
    tier: ClassVar[Literal["fast", "deep"]] = "fast"

    @property
    def source(self) -> str:
        return f"{self.name}@{self.version}"

    @abstractmethod
    def _extract_batch(self, items: Sequence[ItemT], observed_at: datetime) -> list[ItemResult]:
        """Process a batch; return exactly one result per item, in order."""

    def extract_batch(self, items: Sequence[ItemT]) -> list[ItemResult]:
        """Results for a batch, one per item and in order; failures are isolated per item."""
        if not items:
            return []
        observed_at = datetime.now(UTC)
        try:
            results = self._extract_batch(items, observed_at)
            if [r.entity_id for r in results] != [i.entity_id for i in items]:
                raise RuntimeError(f"{self.name} returned {len(results)} results that do not "
                                   f"match its {len(items)} items one for one")
            return results
        except Exception:
            if len(items) == 1:
                return [self._failure(items[0])]
            # Retry one at a time so only the item that breaks gets an error result.
            log.warning("%s failed on a batch of %d; retrying item by item", self.name, len(items))
            out: list[ItemResult] = []
            for item in items:
                try:
                    single = self._extract_batch([item], observed_at)
                    if len(single) != 1 or single[0].entity_id != item.entity_id:
                        raise RuntimeError(f"{self.name} returned {len(single)} results for "
                                           f"item {item.entity_id!r}")
                    out.append(single[0])
                except Exception:
                    out.append(self._failure(item))
            return out

    def extract(self, item: ItemT) -> ItemResult:
        """The single-item call: a batch of one."""
        return self.extract_batch([item])[0]

    def _failure(self, item: ItemT) -> ItemResult:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, InvalidInput):
            err = ItemError(self.name, exc.reason, exc.field, exc.code)
        else:
            log.exception("%s failed on %s", self.name, item.entity_id)
            err = ItemError(self.name, f"{type(exc).__name__}: {exc}", None, "extractor_error")
        return ItemResult(item.entity_id, error=err)

    def signal(
        self,
        item: Listing | Review,
        name: str,
        value: SignalValue,
        observed_at: datetime,
        *,
        score: float | None = None,
        evidence: dict[str, Any] | None = None,
        entity_type: EntityType | None = None,
        entity_id: str | None = None,
    ) -> Signal:
        """Build a Signal record for ``item`` (or a related entity) from this extractor."""
        if name not in self.emits:
            raise ValueError(f"{self.name} does not declare signal {name!r} in emits")
        kind: EntityType = "listing" if isinstance(item, Listing) else "review"
        return Signal(
            tenant=item.tenant,
            entity_type=entity_type or kind,
            entity_id=entity_id or item.entity_id,
            name=name,
            value=value,
            score=None if score is None else float(min(1.0, max(0.0, score))),
            evidence=evidence or {},
            source=self.source,
            observed_at=observed_at,
        )
