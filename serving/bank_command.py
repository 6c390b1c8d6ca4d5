"""``marketguard bank import|export BANK FILE``: the global banks of a data dir, from and to files.

Where: the global banks every tenant matches against (``service.global_banks`` decides who
sees which) live in ``<data-dir>/banks/`` (``<data-dir>/shard-<i>/banks/`` per catalogue
shard: an import writes every shard's copy). The batch job reads ``<data-dir>/banks/``.

Why offline: the running service holds each bank folder open (an ``flock`` on
``banks/LOCK``) and keeps the banks in memory; a second writer would write behind its
back. So the command writes the data dir directly and refuses while a service holds it
(``is open by another writer``): stop the service, import, start it again. To change a
live service's banks, use ``POST /v1/banks/{bank}/items`` (a tenant's own banks); that
path embeds the same way.

Formats:

- content JSONL, embedded or hashed here by the same fast extractors as the service (a
  bank item matches exactly like the records it stands for): reviews ``{"review_id",
  "text"}``; listings ``{"listing_id", "title", "description"?, ...}``; images ``{"id",
  "path"|"data_b64"}`` (``--modality image_pdq|image_sscd``; paths relative to FILE). Optional
  ``source``, ``reason``, ``added_by``, ``tags`` on each line are kept.
- an export of this command (lines with ``id`` and ``vector`` or ``pdq``), imported as it is:
  vectors are not recomputed, so import exports made by the same model.
- ThreatExchange/HMA CSV of PDQ hashes (``hash, id, timestamp, tags``): a ``.csv`` FILE
  into an ``image_pdq`` bank; ``export`` of a PDQ bank to a ``.csv`` FILE writes it.

``--kind`` is the kind of a new bank (by default the kind its FILE's first line names, as an
export's lines do, else ``fraud``); an existing bank keeps its own:
a ``--kind`` that is not it is an error (known-good reviews must never land in a fraud bank),
and so is a line of the other kind. ``export --kind`` checks the bank's kind the same way.
After an import into a review bank, the review text model
(:meth:`indexes.banks.BankStore.review_text_model`) is fitted at once, so a service started on
the data dir has it, and its calibration is printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast, get_args

from indexes.banks import BankStore
from indexes.config import Modality
from serving.api.backend import bank_items
from serving.batch.inputs import resolve_image_paths
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import shard_dir
from serving.scoring.extraction import FastExtraction
from signals.errors import InvalidInput
from signals.vocabulary import BankKind

_BATCH = 256


def bank_roots(config: MarketGuardConfig) -> list[Path]:
    """The global bank folder of every catalogue shard of the data dir."""
    shards = config.service.catalogue.shards
    return [shard_dir(config.data_dir, i, shards) / "banks" for i in range(shards)]


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise InvalidInput("FILE", f"cannot read {str(path)!r}: no such file", "not_found")
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
            yield lineno, rec


def _guess_modality(path: Path) -> Modality:
    """The modality a new bank's FILE holds, from its first line."""
    if path.suffix.lower() == ".csv":
        return "image_pdq"
    for lineno, rec in _lines(path):
        if "pdq" in rec:
            return "image_pdq"
        if "review_id" in rec or ("text" in rec and "title" not in rec):
            return "review_text"
        if "listing_id" in rec or "title" in rec:
            return "listing_text"
        raise InvalidInput(f"line {lineno}", "cannot tell the bank's modality (a review_id, listing_id or "
                                             "pdq): say --modality")
    raise InvalidInput("FILE", f"{str(path)!r} holds no items")


def _file_kind(path: Path) -> BankKind | None:
    """The kind a FILE's first line names (an export's lines carry their bank's), or None."""
    if path.suffix.lower() == ".csv":
        return None
    for lineno, rec in _lines(path):
        found = rec.get("kind")
        if found is None:
            return None
        if found not in ("fraud", "benign"):
            raise InvalidInput(f"line {lineno}.kind", f"must be fraud or benign, not {found!r}")
        return cast(BankKind, found)
    return None


def import_bank(config: MarketGuardConfig, bank: str, path: Path, kind: BankKind | None = None,
                modality: Modality | None = None) -> dict[str, Any]:
    """Import FILE into the bank (created if new, of ``kind``: fraud by default) of every shard;
    returns counts (and the review text model's calibration for a review bank)."""
    if modality is not None and modality not in get_args(Modality):
        raise InvalidInput("--modality", f"must be one of {', '.join(get_args(Modality))}")
    stores = [BankStore(root, config.indexes.banks, config.indexes.thresholds) for root in bank_roots(config)]
    try:
        existing = next((s.get(bank).info for s in stores if bank in s.names()), None)
        if existing is not None:
            if modality is not None and modality != existing.modality:
                raise InvalidInput("--modality", f"bank {bank!r} holds {existing.modality}, not {modality}")
            if kind is not None and kind != existing.kind:
                raise InvalidInput("--kind", f"bank {bank!r} is a {existing.kind} bank, not {kind}")
            modality, kind = existing.modality, existing.kind
        if kind is None:  # a new bank: the kind its FILE's lines name (an export's), else fraud
            kind = _file_kind(path) or "fraud"
        if modality is None:
            modality = _guess_modality(path)
        signals_config = config.signals.model_copy(deep=True)
        signals_config.images.decode.allow_paths = True
        extraction = FastExtraction.build(signals_config, config.data_dir)
        models, _ = extraction.models()
        for s in stores:
            s.check_models(models)
            s.create(bank, modality, kind, models.get(modality))
        added = _import_into(stores, bank, path, modality, kind, extraction)
        out: dict[str, Any] = {"bank": bank, "modality": modality, "kind": kind, "added": added,
                               "items": len(stores[0].get(bank))}
        if modality == "review_text":
            model = stores[0].review_text_model()
            for s in stores[1:]:
                s.review_text_model()
            out["review_text_model"] = None if model is None else {
                "fingerprint": model.fingerprint, "fraud": model.n_fraud, "benign": model.n_benign,
                "vote_ece": model.calibration["vote"]["ece"],
                "ngram_oof_ece": model.calibration["ngram_oof"]["ece"]}
        return out
    finally:
        for s in stores:
            s.close()


def _import_into(stores: list[BankStore], bank: str, path: Path, modality: Modality, kind: BankKind,
                 extraction: FastExtraction) -> int:
    if path.suffix.lower() == ".csv":
        if modality != "image_pdq":
            raise InvalidInput("FILE", "a CSV is a ThreatExchange/HMA PDQ file; "
                                       f"bank {bank!r} holds {modality}")
        return [s.import_hma_csv(bank, path, added_by="marketguard bank import") for s in stores][0]
    first = next(iter(_lines(path)), (0, {}))[1]
    if "vector" in first or "pdq" in first:  # an export: items as they are
        return [s.import_jsonl(bank, path) for s in stores][0]
    total = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal total
        if not pending:
            return
        items = bank_items(extraction, modality, pending)
        for s in stores:
            s.add_items(bank, list(items))
        total += len(items)
        pending.clear()

    for lineno, rec in _lines(path):
        line_kind = rec.pop("kind", kind)
        if line_kind != kind:
            raise InvalidInput(f"line {lineno}.kind", f"{line_kind!r} item in {kind!r} bank {bank!r}")
        if modality in ("image_pdq", "image_sscd"):
            resolve_image_paths({"images": [rec]}, path.parent)
        pending.append(rec)
        if len(pending) >= _BATCH:
            flush()
    flush()
    return total


def export_bank(config: MarketGuardConfig, bank: str, path: Path,
                kind: BankKind | None = None) -> dict[str, Any]:
    """Write the bank (of the first shard: every shard holds the same) as JSONL, or as HMA CSV
    for a PDQ bank and a ``.csv`` FILE; ``kind``, when given, must be the bank's."""
    root = bank_roots(config)[0]
    if not (root / bank / "bank.json").exists():
        raise InvalidInput("BANK", f"no bank named {bank!r} in {str(root)!r}", "not_found")
    store = BankStore(root, config.indexes.banks, config.indexes.thresholds)
    try:
        info = store.get(bank).info
        if kind is not None and kind != info.kind:
            raise InvalidInput("--kind", f"bank {bank!r} is a {info.kind} bank, not {kind}")
        if path.suffix.lower() == ".csv":
            n = store.export_hma_csv(bank, path)
        else:
            n = store.export_jsonl(bank, path)
        return {"bank": bank, "modality": info.modality, "kind": info.kind, "exported": n, "file": str(path)}
    finally:
        store.close()
