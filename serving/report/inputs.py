"""What ``marketguard report`` reads: labels, signals and entity facts, from the store or a batch run.

Two sources give the same :class:`ReportInputs`:

* a batch run: ``RUN/signals.jsonl`` and a labels JSONL (``Label`` records); the facts of the
  run's records (seller or reviewer, category or product, price) come from the run's
  ``work/catalogue/meta.arrow`` when it is there;
* the live store (``--data-dir``; every catalogue shard): its latest signals (or its history,
  for a time window), its labels, its items' facts.

Labels: each entity is judged by its *latest* label (the latest ``labelled_at``; a label
without one counts as given when it was received, or, in a file, after every dated one, in
line order); the earlier ones are kept and counted. A listing's label also judges its seller
and a review's its reviewer and product, unless those carry a label of their own: fraud when
any of their labelled listings (reviews) is fraud, else legit.

``since``/``until`` select signals by ``observed_at`` (``since <= observed_at < until``): the
latest value of each signal key inside the window counts. Only signals of judged entities are
kept in memory, so a run's multi-GB ``signals.jsonl`` streams through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from signals.errors import InvalidInput
from signals.schemas import Label, parse_record

if TYPE_CHECKING:
    from serving.store.sql import SqlSignalStore

Key = tuple[str, str, str]
"""(tenant, entity_type, entity_id)"""
SignalKey = tuple[str, str, str]
"""(entity_type, name, source)"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LabelRecord:
    """One label as the report uses it; ``order`` breaks ties between equal times."""

    tenant: str
    entity_type: str
    entity_id: str
    label: Literal["fraud", "legit"]
    when: datetime
    order: int
    loss_amount: float | None = None
    currency: str | None = None

    @property
    def key(self) -> Key:
        return (self.tenant, self.entity_type, self.entity_id)


@dataclass(frozen=True)
class Facts:
    """What the report knows of a listing or review: its seller (reviewer), category (product), price."""

    owner: str | None
    group: str | None
    price: float | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Judged:
    """An entity's effective label: its own latest one (``via`` "label") or its items' ("listing",
    "review")."""

    is_fraud: bool
    via: Literal["label", "listing", "review"]
    amount: float | None = None
    currency: str | None = None


@dataclass
class SignalValues:
    """One signal (name and source) over the judged entities: value per entity (``nan``: not numeric)."""

    entity_type: str
    name: str
    source: str
    shadow: bool
    values: dict[Key, float] = field(default_factory=dict)
    non_numeric: int = 0
    rolled_from: str | None = None
    """For a listing (review) signal rolled up to the sellers (reviewers, products): "listing" ("review");
    an entity's value is the highest among its items'."""


@dataclass
class ReportInputs:
    origin: str
    judged: dict[Key, Judged]
    facts: dict[Key, Facts]
    signals: dict[SignalKey, SignalValues]
    labels_read: int = 0
    labels_superseded: int = 0
    since: datetime | None = None
    until: datetime | None = None


def label_record(raw: dict[str, Any], order: int, received_at: str | None = None) -> LabelRecord:
    """A validated label (raises :class:`InvalidInput` naming the field)."""
    extra = {k: raw[k] for k in ("id", "received_at") if k in raw}
    label = parse_record(Label, {k: v for k, v in raw.items() if k not in extra})
    when = label.labelled_at or (datetime.fromisoformat(received_at) if received_at else _EPOCH)
    return LabelRecord(label.tenant, label.entity_type, label.entity_id, label.label, when.astimezone(UTC),
                       order, label.loss_amount, label.currency)


def read_label_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line number, raw object, error)`` for each non-blank line of a labels JSONL."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput("FILE", f"{path}: no such file", "not_found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("FILE", f"cannot read {path}: {exc}") from None
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, None, f"not valid JSON: {exc.msg}"
            continue
        if not isinstance(raw, dict):
            yield n, None, "a label must be a JSON object"
            continue
        yield n, raw, None


def read_labels_file(path: Path) -> list[LabelRecord]:
    """Every label of a JSONL file; a bad line is an error naming its line (the report refuses
    to judge signals on a file it could only partly read)."""
    out: list[LabelRecord] = []
    for n, raw, error in read_label_lines(path):
        if error is not None or raw is None:
            raise InvalidInput("labels", f"{path} line {n}: {error}")
        try:
            out.append(label_record(raw, n))
        except InvalidInput as exc:
            raise InvalidInput("labels", f"{path} line {n}: {exc}") from None
    return out


def latest_labels(labels: Iterable[LabelRecord]) -> tuple[dict[Key, LabelRecord], int, int]:
    """Each entity's latest label, the labels read and how many were superseded by a later one."""
    latest: dict[Key, LabelRecord] = {}
    n = 0
    for lab in labels:
        n += 1
        cur = latest.get(lab.key)
        if cur is None or (lab.when, lab.order) >= (cur.when, cur.order):
            latest[lab.key] = lab
    return latest, n, n - len(latest)


_PARENTS: dict[str, tuple[tuple[str, Literal["owner", "group"]], ...]] = {
    "listing": (("seller", "owner"),),
    "review": (("reviewer", "owner"), ("product", "group")),
}


def judge(latest: dict[Key, LabelRecord], facts: dict[Key, Facts]) -> dict[Key, Judged]:
    """Effective labels: each entity's own, then the roll-ups' from their items' (own labels win)."""
    judged: dict[Key, Judged] = {}
    for key, lab in latest.items():
        amount, currency = lab.loss_amount, lab.currency
        f = facts.get(key)
        if amount is None and f is not None and f.price is not None and lab.entity_type == "listing":
            amount, currency = f.price, f.currency
        judged[key] = Judged(lab.label == "fraud", "label", amount, currency)
    implied: dict[Key, tuple[bool, Literal["listing", "review"]]] = {}
    for key, lab in latest.items():
        via: Literal["listing", "review"] = "listing" if key[1] == "listing" else "review"
        for pkey in _parents(key, facts):
            was = implied.get(pkey, (False, via))[0]
            implied[pkey] = (was or lab.label == "fraud", via)
    for pkey, (fraud, via) in implied.items():
        judged.setdefault(pkey, Judged(fraud, via))
    return judged


def party_of(key: Key, facts: dict[Key, Facts]) -> str | None:
    """The seller or buyer behind an entity: a listing's seller, a review's reviewer, the entity itself
    for a seller or reviewer (products have none)."""
    tenant, etype, eid = key
    if etype in ("seller", "reviewer"):
        return f"{tenant}/{eid}"
    f = facts.get(key)
    if etype in ("listing", "review") and f is not None and f.owner:
        return f"{tenant}/{f.owner}"
    return None


def numeric(value: Any) -> float | None:
    """A signal value as a number: booleans as 0/1; None for null or text values."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


def _observed(wire: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(wire["observed_at"]).replace("Z", "+00:00")).astimezone(UTC)


def collect_signals(wires: Iterable[dict[str, Any]], wanted: Collection[Key], since: datetime | None,
                    until: datetime | None,
                    into: dict[SignalKey, SignalValues] | None = None) -> dict[SignalKey, SignalValues]:
    """The values of every signal on the ``wanted`` entities (the last one in order wins per key),
    added to ``into`` when given."""
    out: dict[SignalKey, SignalValues] = {} if into is None else into
    for wire in wires:
        key = (str(wire.get("tenant", "default")), str(wire["entity_type"]), str(wire["entity_id"]))
        if key not in wanted:
            continue
        if since is not None or until is not None:
            at = _observed(wire)
            if (since is not None and at < since) or (until is not None and at >= until):
                continue
        skey = (key[1], str(wire["name"]), str(wire["source"]))
        sv = out.get(skey)
        if sv is None:
            sv = out[skey] = SignalValues(key[1], skey[1], skey[2], bool(wire.get("shadow", False)))
        value = numeric(wire.get("value"))
        if value is None and wire.get("value") is not None:
            sv.non_numeric += 1
        sv.values[key] = math.nan if value is None else value
    return out


def _parents(key: Key, facts: dict[Key, Facts]) -> list[Key]:
    """The seller of a listing; the reviewer and product of a review (where the facts know them)."""
    tenant, etype, _ = key
    f = facts.get(key)
    if f is None or etype not in _PARENTS:
        return []
    return [(tenant, ptype, p) for ptype, attr in _PARENTS[etype] if (p := getattr(f, attr))]


def wanted_keys(judged: dict[Key, Judged], facts: dict[Key, Facts]) -> set[Key]:
    """The entities whose signals the report needs: the judged ones, and every listing (review) of a
    judged seller (reviewer, product), for the roll-ups."""
    return set(judged) | {k for k in facts if any(p in judged for p in _parents(k, facts))}


def roll_up(signals: dict[SignalKey, SignalValues], judged: dict[Key, Judged],
            facts: dict[Key, Facts]) -> None:
    """Add each listing (review) signal rolled up to the judged sellers (reviewers, products): an
    entity's value is the highest among its items' (a seller is flagged when any listing is)."""
    for sv in [s for s in signals.values() if s.entity_type in _PARENTS and s.rolled_from is None]:
        for key, value in sv.values.items():
            if math.isnan(value):
                continue
            for pkey in _parents(key, facts):
                if pkey not in judged:
                    continue
                skey = (pkey[1], sv.name, sv.source)
                up = signals.get(skey)
                if up is None:
                    up = signals[skey] = SignalValues(pkey[1], sv.name, sv.source, sv.shadow,
                                                      rolled_from=sv.entity_type)
                old = up.values.get(pkey, -math.inf)
                up.values[pkey] = max(old, value)


def _run_facts(run: Path) -> dict[Key, Facts]:
    """The facts of a batch run's records (``work/catalogue/meta.arrow``), empty without it."""
    meta = run / "work" / "catalogue" / "meta.arrow"
    manifest = run / "manifest.json"
    if not meta.exists() or not manifest.exists():
        return {}
    import pyarrow as pa
    import pyarrow.ipc as ipc

    kind = "listing" if json.loads(manifest.read_text()).get("kind") == "listings" else "review"
    table = ipc.open_file(pa.memory_map(str(meta))).read_all()
    names = ("tenant", "entity_id", "owner", "group", "price", "currency")
    cols = [table.column(c).to_pylist() for c in names]
    return {(t or "default", kind, eid): Facts(owner, group, price, cur)
            for t, eid, owner, group, price, cur in zip(*cols, strict=True)}


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InvalidInput("signals",
                                           f"{path} line {n} is not valid JSON: {exc.msg}") from None
    except FileNotFoundError:
        raise InvalidInput("signals", f"{path}: no such file", "not_found") from None


def from_files(signals_path: Path, labels_path: Path, *, since: datetime | None = None,
               until: datetime | None = None) -> ReportInputs:
    """Inputs from a batch run's ``signals.jsonl`` (facts from its run folder) and a labels JSONL."""
    latest, read, superseded = latest_labels(read_labels_file(labels_path))
    facts = _run_facts(signals_path.parent)
    judged = judge(latest, facts)
    signals = collect_signals(_jsonl(signals_path), wanted_keys(judged, facts), since, until)
    roll_up(signals, judged, facts)
    return ReportInputs(f"{signals_path} and {labels_path}", judged, facts, signals, read, superseded,
                        since, until)


def from_stores(stores: Sequence[SqlSignalStore], origin: str, *, labels_path: Path | None = None,
                since: datetime | None = None, until: datetime | None = None) -> ReportInputs:
    """Inputs from the live store (each catalogue shard's), its own labels unless a file is given."""
    facts: dict[Key, Facts] = {}
    for store in stores:
        for it in store.iter_items(with_features=False):
            facts[(it.tenant, it.kind, it.item_id)] = Facts(it.owner, it.group, it.price, it.currency)
    if labels_path is not None:
        records = read_labels_file(labels_path)
    else:
        records = []
        for store in stores:
            for raw in store.all_labels():
                records.append(label_record(raw, int(raw["id"]), raw.get("received_at")))
    latest, read, superseded = latest_labels(records)
    judged = judge(latest, facts)
    windowed = since is not None or until is not None

    def wires() -> Iterator[dict[str, Any]]:
        for store in stores:
            yield from store.iter_signals(history=windowed)

    wanted = wanted_keys(judged, facts)
    signals = collect_signals(wires(), wanted, since, until)
    if not windowed:
        # A listing or review taken down (often: because it was the fraud) has no latest signals any
        # more; what its signals said before the take-down is in the history, and that is what counts.
        seen = {k for sv in signals.values() for k in sv.values}
        for store in stores:
            for key in sorted(judged):
                tenant, etype, eid = key
                if key in seen or etype not in ("listing", "review"):
                    continue
                kind: Literal["listing", "review"] = "listing" if etype == "listing" else "review"
                if store.tombstone(tenant, kind, eid) is not None:
                    old = store.history(tenant, kind, eid, 10_000)
                    collect_signals(old, wanted, None, None, into=signals)
    roll_up(signals, judged, facts)
    return ReportInputs(origin, judged, facts, signals, read, superseded, since, until)


def parse_time(text: str, flag: str) -> datetime:
    """An ISO-8601 time (a date alone is its midnight UTC; no zone means UTC)."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(flag, f"{text!r} is not an ISO-8601 date or time (2026-11-24 or "
                                 "2026-11-24T15:00:00Z)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
