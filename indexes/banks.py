"""Banks: named, durable collections of labelled items matched against new content.

A bank holds one modality (``listing_text``, ``review_text``, ``image_sscd`` vectors
or ``image_pdq`` hashes), a ``kind`` (``fraud``: known bad, the default; ``benign``:
known good, so a match can be weighed against both) and an ``enabled`` flag. Items
carry precomputed vectors or hashes plus metadata (source, reason, added_at,
added_by, tags): a bank does not know how vectors were produced, so extractors can
change without touching it.

On disk, ``<root>/<bank>/bank.json`` (settings, written atomically) and
``<root>/<bank>/index/`` (a :class:`~indexes.persistence.DurableIndex`: every add or
remove is fsynced before it returns). Import/export: JSONL (one item a line) and,
for PDQ banks, ThreatExchange/HMA's CSV (no header; ``hash_hex, id, timestamp,
space-separated tags``) so banks move between HMA and MarketGuard.

Imported timestamps must carry a time zone: HMA/ThreatExchange write
``2020-07-31T18:47:52+0000``, and a naive time is ambiguous (whose local time?),
so a naive ``added_at`` / timestamp is refused as InvalidInput naming the line
rather than guessed as UTC.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from indexes.atomic import read_json, write_file_atomic, write_json_atomic
from indexes.config import BanksConfig, PdqIndexConfig, ThresholdsConfig, VectorIndexConfig
from indexes.pdq import PdqIndex
from indexes.persistence import DurableIndex, lock_directory
from indexes.vector import VectorIndex
from signals.derived import BankHit
from signals.errors import InvalidInput, from_pydantic
from signals.pdq_hash import pdq_from_hex, pdq_to_hex
from signals.review_text import (
    KNN_K,
    ReviewTextModel,
    ReviewTextVerdict,
    fit_review_text_model,
    review_text_verdicts,
)
from signals.vocabulary import BankKind, Modality

BANK_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
REVIEW_MODEL = "review_text_model"
"""``<root>/review_text_model.json`` and ``.npz``: the text model fitted on the review banks."""
_HMA_TIME = "%Y-%m-%dT%H:%M:%S+0000"


def _parse_hma_time(value: str, field: str) -> datetime:
    """An HMA timestamp (``2020-07-31T18:47:52+0000``) or zoned ISO 8601; naive is refused."""
    try:
        return datetime.strptime(value, _HMA_TIME).replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, f"not an ISO 8601 timestamp: {value!r:.60}") from None
    if parsed.tzinfo is None:
        raise InvalidInput(field, f"no time zone in {value!r:.60} (HMA writes +0000)")
    return parsed


class BankItem(BaseModel):
    """One labelled item: an id, its vector or PDQ hash, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    vector: list[float] | None = None
    pdq: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    source: str = Field(default="", max_length=200)
    reason: str = Field(default="", max_length=2000)
    added_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    added_by: str = Field(default="", max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=64)
    text: str | None = Field(default=None, max_length=20_000,
                             description="the review's text (review banks: what the text model learns from)")

    def metadata(self) -> dict[str, Any]:
        """The JSON-able metadata stored next to the vector or hash."""
        meta: dict[str, Any] = {
            "source": self.source,
            "reason": self.reason,
            "added_at": self.added_at.isoformat(),
            "added_by": self.added_by,
            "tags": self.tags,
        }
        if self.text is not None:
            meta["text"] = self.text
        return meta


class BankInfo(BaseModel):
    """A bank's settings."""

    model_config = ConfigDict(extra="forbid")

    name: str
    modality: Modality
    kind: BankKind = "fraud"
    enabled: bool = True
    dim: int | None = None
    model: str | None = Field(default=None, description="the model and version that made the bank's vectors")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Bank:
    """One open bank: its settings and its durable index of items."""

    def __init__(self, directory: Path, info: BankInfo, config: BanksConfig, *,
                 read_only: bool = False) -> None:
        self.directory = directory
        self.info = info
        if info.modality == "image_pdq":
            pcfg = PdqIndexConfig()
            self.store: DurableIndex[Any] = DurableIndex(
                directory / "index", lambda: PdqIndex(pcfg), lambda p: PdqIndex.load(p, pcfg),
                read_only=read_only,
            )
        else:
            if info.dim is None:
                raise InvalidInput("bank.dim", f"vector bank {info.name!r} has no dim in bank.json")
            # Banks are small and exported: keep exact, unquantised vectors.
            vcfg = VectorIndexConfig(dim=info.dim, quantization="none", exact_max=50_000)
            self.store = DurableIndex(
                directory / "index", lambda: VectorIndex(vcfg), lambda p: VectorIndex.load(p, vcfg),
                read_only=read_only,
            )

    def __len__(self) -> int:
        return len(self.store.index)

    @property
    def is_pdq(self) -> bool:
        """Whether the bank holds PDQ hashes (else vectors)."""
        return self.info.modality == "image_pdq"

    def add(self, items: list[BankItem]) -> int:
        """Add or replace items (durable on return); returns how many."""
        if not items:
            return 0
        if self.is_pdq:
            data: Any = []
            for k, it in enumerate(items):
                if it.pdq is None:
                    raise InvalidInput(f"items[{k}].pdq", "a PDQ bank item needs a pdq hash")
                data.append(it.pdq.lower())
        else:
            rows = []
            for k, it in enumerate(items):
                if it.vector is None:
                    raise InvalidInput(f"items[{k}].vector", "a vector bank item needs a vector")
                rows.append(it.vector)
            try:
                data = np.asarray(rows, dtype=np.float32)
            except ValueError:
                raise InvalidInput("items.vector", "vectors of different lengths") from None
        self.store.add([it.id for it in items], data, [it.metadata() for it in items])
        return len(items)

    def remove(self, ids: list[str]) -> int:
        """Remove items by id; returns how many were present."""
        return self.store.remove(ids)

    def items(self) -> list[BankItem]:
        """Every item with its vector or hash (for export)."""
        ids = [i for i, _ in self.store.iter_items() if i in self.store.index]
        if not ids:
            return []
        out = []
        if self.is_pdq:
            hashes = self.store.index.get_hashes(ids)
            for i, h in zip(ids, hashes, strict=True):
                out.append(BankItem(id=i, pdq=pdq_to_hex(h), **self.store.meta[i]))
        else:
            vecs = self.store.index.get_vectors(ids)
            for i, v in zip(ids, vecs, strict=True):
                out.append(BankItem(id=i, vector=v.tolist(), **self.store.meta[i]))
        return out

    def close(self) -> None:
        """Release the bank's files."""
        self.store.close()


class BankStore:
    """All banks under one folder: create, enable/disable, add/remove, match, import/export."""

    def __init__(
        self,
        root: Path,
        config: BanksConfig | None = None,
        thresholds: ThresholdsConfig | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.config = config or BanksConfig()
        self.thresholds = thresholds or ThresholdsConfig()
        # One writer a bank folder: the service holds it while it runs, so `marketguard bank
        # import` beside a running service fails here instead of writing behind its back.
        # Readers (the batch job's tasks, many at once) share the folder with each other only.
        fd = lock_directory(self.root, read_only, "banks",
                            f"{str(self.root)!r} is open by another writer (a running service?)")
        self._lock_fd: int | None = fd if fd >= 0 else None
        self._banks: dict[str, Bank] = {}
        self._review_model: tuple[int, ReviewTextModel | None] | None = None
        self._version = 0  # bumped by every change of a bank's items or settings
        try:
            for p in sorted(self.root.iterdir()) if self.root.is_dir() else []:
                if (p / "bank.json").exists():
                    info = BankInfo.model_validate(read_json(p / "bank.json"))
                    self._banks[info.name] = Bank(p, info, self.config, read_only=read_only)
        except BaseException:
            self.close()
            raise

    def check_models(self, models: Mapping[Modality, str]) -> None:
        """Refuse banks whose vectors another model made (``models``: modality -> model id);
        a bank that records no model (made before models were recorded) is taken as it is."""
        for bank in self._banks.values():
            want = models.get(bank.info.modality)
            if bank.info.model is not None and want is not None and bank.info.model != want:
                raise InvalidInput("bank", f"bank {bank.info.name!r} was built by model {bank.info.model!r}, "
                                           f"but the configured {bank.info.modality} model is {want!r}: "
                                           "re-import it")

    def _writable(self) -> None:
        if self.read_only:
            raise InvalidInput("banks", f"{str(self.root)!r} is open read-only")

    def names(self) -> list[str]:
        """Names of all banks."""
        return sorted(self._banks)

    def get(self, name: str) -> Bank:
        """An open bank, or InvalidInput(not_found)."""
        bank = self._banks.get(name)
        if bank is None:
            raise InvalidInput("bank", f"no bank named {name!r}", "not_found")
        return bank

    def create(self, name: str, modality: Modality, kind: BankKind = "fraud",
               model: str | None = None) -> Bank:
        """Create a bank (idempotent when the settings match)."""
        self._writable()
        if not BANK_NAME.match(name):
            raise InvalidInput("bank", f"{name!r} is not a bank name (a-z, 0-9, _ -; 1-64)")
        if name in self._banks:
            b = self._banks[name]
            if (b.info.modality, b.info.kind) != (modality, kind):
                raise InvalidInput(
                    "bank", f"{name!r} exists as {b.info.modality}/{b.info.kind}, not {modality}/{kind}"
                )
            return b
        dim = {
            "listing_text": self.config.text_dim,
            "review_text": self.config.text_dim,
            "image_sscd": self.config.sscd_dim,
            "image_pdq": None,
        }[modality]
        try:
            info = BankInfo(name=name, modality=modality, kind=kind, dim=dim, model=model)
        except pydantic.ValidationError as e:
            raise from_pydantic(e) from None
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "bank.json", info.model_dump(mode="json"))
        self._banks[name] = Bank(d, info, self.config)
        self._version += 1
        return self._banks[name]

    def drop(self, name: str) -> None:
        """Delete a bank and its files."""
        self._writable()
        bank = self.get(name)
        bank.close()
        del self._banks[name]
        shutil.rmtree(bank.directory)
        self._version += 1

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a bank: a disabled bank keeps its items but never matches."""
        self._writable()
        bank = self.get(name)
        bank.info = bank.info.model_copy(update={"enabled": enabled})
        write_json_atomic(bank.directory / "bank.json", bank.info.model_dump(mode="json"))
        self._version += 1

    def add_items(self, name: str, items: list[BankItem] | list[dict[str, Any]]) -> int:
        """Validate and add items to a bank."""
        self._writable()
        parsed = []
        for k, it in enumerate(items):
            if isinstance(it, BankItem):
                parsed.append(it)
                continue
            try:
                parsed.append(BankItem.model_validate(it))
            except pydantic.ValidationError as e:
                err = from_pydantic(e)
                raise InvalidInput(f"items[{k}].{err.field}", err.reason, err.code) from None
        self._version += 1
        return self.get(name).add(parsed)

    def remove_items(self, name: str, ids: list[str]) -> int:
        """Remove items from a bank."""
        self._writable()
        self._version += 1
        return self.get(name).remove(ids)

    def match(
        self,
        modality: Modality,
        queries: np.ndarray | list[str],
        threshold: float | None = None,
    ) -> list[list[BankHit]]:
        """Match a batch against every enabled bank of a modality, closest first.

        Vectors match at similarity >= threshold, PDQ at Hamming distance <= threshold
        (default: the modality's threshold from config), at most ``top_k`` per bank.
        Each hit is a :class:`~signals.derived.BankHit`, ready for the bank signals:
        ``distance`` is ``1 - cosine`` for vectors and Hamming bits for PDQ,
        ``similarity`` the cosine, or ``1 - bits / 256`` for PDQ.
        """
        thr = self.thresholds.for_modality(modality) if threshold is None else threshold
        banks = [b for b in self._banks.values() if b.info.modality == modality and b.info.enabled]
        n = len(queries)
        out: list[list[BankHit]] = [[] for _ in range(n)]
        for b in banks:
            if not len(b):
                continue
            if modality == "image_pdq":
                res = b.store.index.range_search(queries, int(thr))
                for qi, hits in enumerate(res):
                    out[qi].extend(
                        BankHit(b.info.name, b.info.kind, h.id, modality, float(h.distance),
                                1 - h.distance / 256)
                        for h in hits[: self.config.top_k]
                    )
            else:
                res = b.store.index.range_search(queries, float(thr))
                for qi, hits in enumerate(res):
                    out[qi].extend(
                        BankHit(b.info.name, b.info.kind, h.id, modality, 1.0 - h.score, h.score)
                        for h in hits[: self.config.top_k]
                    )
        for row in out:
            row.sort(key=lambda m: (m.distance, m.bank, m.item_id))
        return out

    # ----------------------------------------------------------- import/export
    def export_jsonl(self, name: str, path: Path) -> int:
        """Write a bank's items as JSONL (with ``kind`` on each line); returns the count."""
        bank = self.get(name)
        items = bank.items()
        with open(path, "w", encoding="utf-8") as f:
            for it in items:
                rec = it.model_dump(mode="json", exclude_none=True)
                rec["kind"] = bank.info.kind
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        return len(items)

    def import_jsonl(self, name: str, path: Path, batch: int = 1000) -> int:
        """Add items from JSONL (a ``kind`` field, if present, must match the bank)."""
        self._writable()
        bank = self.get(name)
        pending: list[BankItem] = []
        total = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidInput(f"line {lineno}", f"not JSON: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise InvalidInput(f"line {lineno}", f"expected a JSON object, got {type(rec).__name__}")
                kind = rec.pop("kind", bank.info.kind)
                if kind != bank.info.kind:
                    raise InvalidInput(
                        f"line {lineno}.kind", f"{kind!r} item in {bank.info.kind!r} bank {name!r}"
                    )
                try:
                    item = BankItem.model_validate(rec)
                except pydantic.ValidationError as e:
                    err = from_pydantic(e)
                    raise InvalidInput(f"line {lineno}.{err.field}", err.reason, err.code) from None
                if "added_at" in rec and item.added_at.tzinfo is None:
                    raise InvalidInput(f"line {lineno}.added_at", f"no time zone in {rec['added_at']!r:.60}")
                pending.append(item)
                if len(pending) >= batch:
                    total += bank.add(pending)
                    pending = []
        self._version += 1
        return total + bank.add(pending)

    def export_hma_csv(self, name: str, path: Path) -> int:
        """Write a PDQ bank as HMA/ThreatExchange CSV: hash, id, timestamp, tags."""
        bank = self.get(name)
        if not bank.is_pdq:
            raise InvalidInput("bank", f"{name!r} holds {bank.info.modality}, not PDQ hashes")
        items = bank.items()
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            for it in items:
                ts = it.added_at.astimezone(UTC).strftime(_HMA_TIME)
                w.writerow([it.pdq, it.id, ts, " ".join(it.tags)])
        return len(items)

    def import_hma_csv(self, name: str, path: Path, added_by: str = "", batch: int = 1000) -> int:
        """Add a PDQ bank's items from HMA/ThreatExchange CSV (hash first, then id, time, tags)."""
        self._writable()
        bank = self.get(name)
        if not bank.is_pdq:
            raise InvalidInput("bank", f"{name!r} holds {bank.info.modality}, not PDQ hashes")
        pending: list[BankItem] = []
        total = 0
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if not row or not row[0].strip():
                    continue
                h = row[0].strip().lower()
                if lineno == 1 and not re.fullmatch(r"[0-9a-f]{64}", h):
                    continue  # a header line
                pdq_from_hex(h, f"line {lineno}.hash")
                item_id = row[1].strip() if len(row) > 1 and row[1].strip() else f"pdq-{h[:16]}"
                added_at = datetime.now(UTC)
                if len(row) > 2 and row[2].strip():
                    added_at = _parse_hma_time(row[2].strip(), f"line {lineno}.timestamp")
                tags = row[3].split() if len(row) > 3 else []
                try:
                    item = BankItem(
                        id=item_id,
                        pdq=h,
                        source=f"hma_csv:{Path(path).name}",
                        added_at=added_at,
                        added_by=added_by,
                        tags=tags,
                    )
                except pydantic.ValidationError as e:
                    err = from_pydantic(e)
                    raise InvalidInput(f"line {lineno}.{err.field}", err.reason, err.code) from None
                pending.append(item)
                if len(pending) >= batch:
                    total += bank.add(pending)
                    pending = []
        self._version += 1
        return total + bank.add(pending)

    # ------------------------------------------------------------ review text
    def nearest(self, modality: Modality, queries: np.ndarray, k: int = KNN_K) -> list[list[BankHit]]:
        """The ``k`` nearest items of each enabled vector bank of ``modality`` for each query,
        whatever their similarity (the kNN vote's neighbours), closest first."""
        if modality == "image_pdq":
            raise InvalidInput("modality", "nearest is for vector banks, not PDQ")
        out: list[list[BankHit]] = [[] for _ in range(len(queries))]
        for b in self._banks.values():
            if b.info.modality != modality or not b.info.enabled or not len(b) or not len(queries):
                continue
            for qi, hits in enumerate(b.store.index.search(np.asarray(queries, dtype=np.float32), k)):
                out[qi].extend(BankHit(b.info.name, b.info.kind, h.id, modality, 1.0 - h.score, h.score)
                               for h in hits)
        for row in out:
            row.sort(key=lambda m: (m.distance, m.bank, m.item_id))
        return out

    def _review_fingerprint(self) -> tuple[str, list[tuple[Bank, list[str]]]]:
        parts = []
        h = hashlib.sha256()
        for name in sorted(self._banks):
            b = self._banks[name]
            if b.info.modality != "review_text" or not b.info.enabled:
                continue
            ids = sorted(i for i, m in b.store.iter_items() if i in b.store.index and m.get("text"))
            h.update(json.dumps([name, b.info.kind, b.info.model, ids]).encode("utf-8"))
            parts.append((b, ids))
        return h.hexdigest()[:16], parts

    def review_text_model(self) -> ReviewTextModel | None:
        """The text model of the enabled review banks (:mod:`signals.review_text`), refitted when
        their items, kinds or enabled flags changed; None while either kind has too few texts.

        Kept in ``<root>/review_text_model.json`` + ``.npz`` (written atomically, no pickle) and
        loaded from there when it was fitted on the same contents (the bank command fits it at
        import, so a service starts with it). Fitting takes seconds per thousand bank reviews;
        it happens on the first use after a change (with a bank added to over HTTP, the next
        review scored pays it).
        """
        if self._review_model is not None and self._review_model[0] == self._version:
            return self._review_model[1]
        fingerprint, parts = self._review_fingerprint()
        model = self._load_review_model(fingerprint)
        if model is None and parts:
            texts: list[str] = []
            fraud: list[bool] = []
            vecs: list[np.ndarray] = []
            for b, ids in parts:
                if not ids:
                    continue
                texts += [str(b.store.meta[i]["text"]) for i in ids]
                fraud += [b.info.kind == "fraud"] * len(ids)
                vecs.append(np.asarray(b.store.index.get_vectors(ids), dtype=np.float32))
            if vecs:
                model = fit_review_text_model(texts, fraud, np.concatenate(vecs), fingerprint)
            if model is not None and not self.read_only:  # read-only: fitted, not kept
                self._save_review_model(model)
        self._review_model = (self._version, model)
        return model

    def _load_review_model(self, fingerprint: str) -> ReviewTextModel | None:
        meta_path, arr_path = self.root / f"{REVIEW_MODEL}.json", self.root / f"{REVIEW_MODEL}.npz"
        if not meta_path.exists() or not arr_path.exists():
            return None
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
            return None
        with np.load(arr_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        try:
            return ReviewTextModel.from_parts(meta, arrays)
        except (ValueError, KeyError):
            return None  # another format: refitted

    def _save_review_model(self, model: ReviewTextModel) -> None:
        buf = io.BytesIO()
        a = model.arrays()
        np.savez_compressed(buf, idf=a["idf"], ngram_w=a["ngram_w"], fingerprint=a["fingerprint"])
        data = buf.getvalue()

        def write(f: BinaryIO) -> None:
            f.write(data)

        # the arrays first; both carry the fingerprint, so a crash between the two is a refit
        write_file_atomic(self.root / f"{REVIEW_MODEL}.npz", write)
        write_json_atomic(self.root / f"{REVIEW_MODEL}.json", model.to_json())

    def close(self) -> None:
        """Close every bank and release the folder."""
        for b in self._banks.values():
            b.close()
        self._banks.clear()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


class ReviewBankJudge:
    """The review-bank verdict of review texts (:class:`~signals.review_text.ReviewTextVerdict`),
    the one implementation the batch job and the service call.

    ``stores``: bank stores with an optional filter on bank names (a tenant's view of the
    global banks); the nearest items come from all of them, the text model from the first
    store that has one (a tenant's own banks before the global ones).
    """

    def __init__(self, stores: Sequence[tuple[BankStore, Callable[[str], bool] | None]]) -> None:
        self.stores = list(stores)

    @property
    def active(self) -> bool:
        """Whether any enabled review bank is visible (else no verdicts: the v1 signals)."""
        return any(b.info.modality == "review_text" and b.info.enabled and (keep is None or keep(b.info.name))
                   for store, keep in self.stores for b in (store.get(n) for n in store.names()))

    def verdicts(self, vectors: np.ndarray, texts: Sequence[str]) -> list[ReviewTextVerdict]:
        """One verdict per (vector, text); the texts must be non-blank (blank texts are not compared)."""
        if len(vectors) != len(texts):
            raise InvalidInput("texts", f"{len(texts)} texts for {len(vectors)} vectors")
        neighbours: list[list[tuple[str, str, str, float]]] = [[] for _ in texts]
        model: ReviewTextModel | None = None
        for store, keep in self.stores:
            for row, hits in zip(neighbours, store.nearest("review_text", vectors, KNN_K), strict=True):
                row.extend((h.bank, h.kind, h.item_id, h.similarity) for h in hits
                           if keep is None or keep(h.bank))
            if model is None:
                model = store.review_text_model()
        return review_text_verdicts(texts, neighbours, model)
