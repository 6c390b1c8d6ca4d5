"""Image copies end to end, on both paths that call :class:`ImageNearDuplicates`: the service's
engine (features through the store's npz) and the batch job's catalogue stages (features
through the part files and the memory-mapped catalogue). No Ray: the batch stages are run
in process on parts made by the very extractors the job's actors run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from serving.batch.catalogue import build_catalogue
from serving.batch.extract import PART_SCHEMA, extract_row_stub, fill_features, part_path
from serving.batch.inputs import Unit
from serving.batch.pairs import ModalityView, build_index, open_index, search_blocks
from serving.config import MarketGuardConfig
from serving.deployments.catalogue import open_engine
from serving.scoring.extraction import FastExtraction
from signals.schemas import Listing, parse_record
from tests.indexes.test_image_near_duplicates import ALIKE, PHOTO, needs_data

pytestmark = needs_data


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _images() -> dict[str, bytes]:
    photo = Image.open(PHOTO).convert("RGB")
    w, h = photo.size
    copy = ImageOps.mirror(photo.crop((w // 3, h // 5, w // 3 + w // 2, h // 5 + h // 2)))
    return {"photo": _jpeg(photo), "copy": _jpeg(copy),
            "alike_a": ALIKE[0][0].read_bytes(), "alike_b": ALIKE[0][1].read_bytes()}


TITLES = {"A": "Espresso cup on saucer", "B": "Garden hose reel 30m", "C": "Mens running tee",
          "D": "Winter parka with hood"}
IMAGE_OF = {"A": "photo", "B": "copy", "C": "alike_a", "D": "alike_b"}


def _rows() -> list[dict[str, Any]]:
    import base64

    imgs = _images()
    return [{"listing_id": lid, "seller_id": f"s{lid}", "title": TITLES[lid], "price": 10.0 + i,
             "currency": "EUR", "images": [{"data_b64": base64.b64encode(imgs[IMAGE_OF[lid]]).decode()}]}
            for i, lid in enumerate(TITLES)]


def _config(data_dir: Path) -> MarketGuardConfig:
    return MarketGuardConfig.model_validate({
        "data_dir": str(data_dir),
        "signals": {"images": {"ocr": {"enabled": False}, "nsfw": {"enabled": False}}}})


def test_the_engine_keeps_local_features_and_verifies_copies(data_dir: Path) -> None:
    cfg = _config(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    models, dims = ex.models()
    engine = open_engine(cfg, models, dims)
    extracted = ex.extract("listing", [parse_record(Listing, r) for r in _rows()])
    engine.score_listings(extracted)
    # The store keeps the local features and the region vectors (npz round trip).
    stored = engine.store.get_item("default", "listing", "B")
    assert stored is not None
    assert stored.features["image_local"].shape == (1, 2, 256, 36)
    assert np.array_equal(stored.features["image_local"], extracted[1].features["image_local"])
    assert stored.features["image_sscd_regions"].shape == (1, 5, 512)
    idx = engine.indexes.get("default", "image_sscd")
    assert idx is not None and "B/0@5" in idx.index and "B/0" in idx.index

    def matches(lid: str) -> set[tuple[str, str]]:
        found = engine.entity_signals("default", "listing", lid, False)
        assert found is not None
        count = next(s for s in found["signals"] if s["name"] == "near_duplicate.count")
        return {(m["id"], m["modality"]) for m in (count.get("evidence") or {}).get("matches", [])}

    # The candidates' local features come from the store (without them the old cosine rule
    # would decide, and C ~ D, at cosine 0.75, would pass it).
    assert all(b is not None for b in engine._local_features("default", ["A/0", "C/0"]))
    assert ("A", "image_sscd") in matches("B") and ("B", "image_sscd") in matches("A")
    assert not any(m[0] == "C" for m in matches("D")), matches("D")  # alike on white: refused
    engine.close()


def test_the_batch_stages_keep_local_features_and_verify_copies(tmp_path: Path, data_dir: Path) -> None:
    cfg = _config(data_dir)
    ex = FastExtraction.build(cfg.signals, data_dir)
    records = [parse_record(Listing, r) for r in _rows()]
    results = ex.registry.extract_batch("listing", records)
    rows = []
    for pos, (rec, res) in enumerate(zip(records, results, strict=True)):
        row = extract_row_stub({"unit": 0, "row": pos, "unit_rows": len(records), "where": f"x:{pos + 1}",
                                "entity_id": rec.entity_id, "record": None, "reject": None})
        fill_features(row, res, want_pdq=True, want_sscd=True, want_local=True)
        row["record"] = rec.model_dump_json(by_alias=True, exclude={"images"})
        rows.append(row)
    work = tmp_path / "work"
    (work / "units").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PART_SCHEMA), part_path(work / "units", 0))
    unit = Unit(index=0, path="x", fmt="jsonl", start=0, stop=1, first_row=1)
    cat = build_catalogue(work, [unit], "listing", tmp_path / "rejected.jsonl")
    # The catalogue's features are the extractors' (part bytes -> memory map round trip).
    assert cat.local is not None and cat.local.shape == (4, 2, 256, 36)
    assert np.array_equal(cat.local[1], results[1].features["image_local"][0])
    assert cat.sscd_regions is not None and cat.sscd_regions.shape == (4, 5, 512)
    view = ModalityView(cat, "image_sscd", np.arange(cat.n), cfg.indexes)
    final = tmp_path / "indexes" / "default" / "image_sscd"
    build_index(view, cfg.indexes, final)
    index = open_index(view, cfg.indexes, final)
    assert len(index) == 4 * 6
    pairs = [p for _, _, p in search_blocks(view, cfg.indexes, index, None, None, 16, lambda b: True)]
    ids = [cat.value("entity_id", r) for r in range(cat.n)]
    found = {(ids[a], ids[b]) for p in pairs for a, b in zip(p.a.tolist(), p.b.tolist(), strict=True)}
    assert ("A", "B") in found and ("C", "D") not in found
    items = json.loads(next(final.glob("snap-*/items.json")).read_text())
    assert items["B/0@3"] == items["B/0"] == {"owner": "sB", "record_id": "B"}
