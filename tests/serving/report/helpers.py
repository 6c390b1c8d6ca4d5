"""Small report inputs written by hand: signals, labels and a batch run's facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def wire(eid: str, name: str, value: Any, *, etype: str = "listing", source: str = "listing_near_duplicate@1",
         shadow: bool = False, tenant: str = "default", at: str = "2026-11-24T12:00:00Z") -> dict[str, Any]:
    return {"schema": "marketguard.signal/v1", "tenant": tenant, "entity_type": etype, "entity_id": eid,
            "name": name, "value": value, "score": None, "evidence": {}, "source": source, "shadow": shadow,
            "observed_at": at}


def label(eid: str, lab: str, *, etype: str = "listing", **kw: Any) -> dict[str, Any]:
    return {"entity_type": etype, "entity_id": eid, "label": lab, **kw}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_run(run: Path, signals: list[dict[str, Any]], facts: list[dict[str, Any]]) -> Path:
    """A batch run folder as the report reads it: signals.jsonl, manifest.json, work/catalogue/meta.arrow."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from serving.batch.catalogue import META_SCHEMA

    run.mkdir(parents=True, exist_ok=True)
    (run / "manifest.json").write_text(json.dumps({"kind": "listings"}))
    cat = run / "work" / "catalogue"
    cat.mkdir(parents=True)
    cols = {f.name: [r.get(f.name) for r in facts] for f in META_SCHEMA}
    with ipc.new_file(str(cat / "meta.arrow"), META_SCHEMA) as w:
        w.write_table(pa.table(cols, schema=META_SCHEMA))
    return write_jsonl(run / "signals.jsonl", signals)


def scam_run(run: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Ten listings (four scams by burner sellers, six honest by two shops), a live and a shadow
    content signal, a near-duplicate count, the sellers' roll-up; and their labels."""
    facts, signals, labels = [], [], []
    for i in range(10):
        scam = i < 4
        eid = f"L{i}"
        seller = f"burner{i}" if scam else f"shop{i % 2}"
        facts.append({"tenant": "default", "entity_id": eid, "owner": seller,
                      "group": "phones" if i % 2 else "audio", "price": 100.0 + i, "currency": "GBP"})
        signals.append(wire(eid, "near_duplicate.count", [5, 3, 0, 3, 3, 0, 0, 0, 0, 0][i]))
        signals.append(wire(eid, "content.offplatform_contact", [1, 1, 0, 0, 0, 1, 0, 0, 0, 0][i],
                            source="content_rules@2"))
        signals.append(wire(eid, "content.offplatform_contact", [1, 1, 1, 0, 0, 0, 0, 0, 0, 0][i],
                            source="content_rules_candidate@2", shadow=True))
        labels.append(label(eid, "fraud" if scam else "legit"))
    for s in ("burner0", "burner1", "burner2", "burner3", "shop0", "shop1"):
        signals.append(wire(s, "seller.cluster_count", 1 if s.startswith("burner") else 0, etype="seller",
                            source="seller_rollup@1"))
    return write_run(run, signals, facts), labels
