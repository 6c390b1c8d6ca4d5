"""Banks: labelled items, enable/disable, matching, durability, JSONL and HMA CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes.banks import BankStore
from indexes.config import BanksConfig
from signals.derived import BankHit
from signals.errors import InvalidInput
from tests.indexes.conftest import flip_bits, random_vectors

CFG = BanksConfig(text_dim=16, sscd_dim=16)
HMA_LINE = (
    "acecf3355e3125c8e24e2f30e0d4ec4f8482b878b3c34cdbdf063278db275992,2880742865368386,"
    "2020-07-31T18:47:52+0000,media_priority_pdq_samples disputed\n"
)


def test_vector_banks_match_by_modality_kind_and_enabled(tmp_path: Path) -> None:
    store = BankStore(tmp_path, CFG)
    v = random_vectors(4, 16, seed=1)
    store.create("scam-titles", "listing_text", "fraud")
    store.create("good-titles", "listing_text", "benign")
    store.create("fake-reviews", "review_text")
    store.add_items("scam-titles", [{"id": "s1", "vector": v[0].tolist(), "reason": "advance fee"}])
    store.add_items("good-titles", [{"id": "g1", "vector": v[0].tolist()}])
    store.add_items("fake-reviews", [{"id": "r1", "vector": v[1].tolist()}])
    res = store.match("listing_text", v[:2])
    assert {(m.bank, m.kind, m.item_id) for m in res[0]} == {
        ("scam-titles", "fraud", "s1"),
        ("good-titles", "benign", "g1"),
    }
    assert res[1] == [] and res[0][0].distance == pytest.approx(0, abs=1e-5)
    # The store's hits are the bank signals' input as they are: BankHit, modality included.
    assert all(isinstance(m, BankHit) and m.modality == "listing_text" for m in res[0])
    assert res[0][0].similarity == pytest.approx(1 - res[0][0].distance)
    store.set_enabled("good-titles", False)
    assert [m.bank for m in store.match("listing_text", v[:1])[0]] == ["scam-titles"]
    store.remove_items("scam-titles", ["s1"])
    assert store.match("listing_text", v[:1]) == [[]]
    store.close()
    again = BankStore(tmp_path, CFG)  # settings and items survive a restart
    assert again.names() == ["fake-reviews", "good-titles", "scam-titles"]
    assert not again.get("good-titles").info.enabled
    assert [m.item_id for m in again.match("review_text", v[1:2])[0]] == ["r1"]
    again.close()


def test_pdq_bank_matches_within_threshold(tmp_path: Path) -> None:
    store = BankStore(tmp_path, CFG)
    store.create("csam-like", "image_pdq")
    rng = np.random.default_rng(2)
    h = rng.integers(0, 256, (3, 32), dtype=np.uint8)
    store.add_items("csam-like", [{"id": f"p{i}", "pdq": bytes(h[i]).hex()} for i in range(3)])
    near, far = flip_bits(h[0], 20, rng), flip_bits(h[1], 40, rng)
    res = store.match("image_pdq", np.stack([near, far]))
    assert [(m.item_id, m.distance) for m in res[0]] == [("p0", 20.0)]
    assert res[0][0] == BankHit("csam-like", "fraud", "p0", "image_pdq", 20.0, 1 - 20 / 256)
    assert res[1] == []
    assert store.match("image_pdq", np.stack([far]), threshold=40)[0][0].item_id == "p1"
    store.close()


def test_jsonl_round_trip(tmp_path: Path) -> None:
    store = BankStore(tmp_path / "a", CFG)
    store.create("reviews", "review_text", "fraud")
    v = random_vectors(3, 16, seed=3)
    store.add_items(
        "reviews",
        [
            {
                "id": f"r{i}",
                "vector": v[i].tolist(),
                "source": "moderation",
                "reason": "template",
                "added_by": "analyst@x",
                "tags": ["ring-7"],
            }
            for i in range(3)
        ],
    )
    out = tmp_path / "reviews.jsonl"
    assert store.export_jsonl("reviews", out) == 3
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["kind"] for x in lines} == {"fraud"} and lines[0]["added_by"] == "analyst@x"
    other = BankStore(tmp_path / "b", CFG)
    other.create("reviews", "review_text", "fraud")
    assert other.import_jsonl("reviews", out) == 3
    assert [m.item_id for m in other.match("review_text", v[2:3])[0]] == ["r2"]
    other.create("good", "review_text", "benign")
    with pytest.raises(InvalidInput) as e:
        other.import_jsonl("good", out)  # fraud items into a benign bank
    assert e.value.field == "line 1.kind"
    store.close()
    other.close()


def test_hma_csv_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "hma.csv"
    src.write_text(HMA_LINE)
    store = BankStore(tmp_path / "banks", CFG)
    store.create("te-pdq", "image_pdq")
    assert store.import_hma_csv("te-pdq", src, added_by="import") == 1
    item = store.get("te-pdq").items()[0]
    assert item.id == "2880742865368386" and item.tags == ["media_priority_pdq_samples", "disputed"]
    out = tmp_path / "out.csv"
    store.export_hma_csv("te-pdq", out)
    assert out.read_text().strip() == HMA_LINE.strip()
    store.create("titles", "listing_text")
    with pytest.raises(InvalidInput):
        store.export_hma_csv("titles", out)
    store.close()


def test_bad_items_and_names_are_rejected(tmp_path: Path) -> None:
    store = BankStore(tmp_path, CFG)
    with pytest.raises(InvalidInput):
        store.create("Bad Name", "listing_text")
    store.create("p", "image_pdq")
    with pytest.raises(InvalidInput) as e:
        store.add_items("p", [{"id": "x", "pdq": "zz"}])
    assert e.value.field == "items[0].pdq"
    with pytest.raises(InvalidInput) as e:
        store.add_items("p", [{"id": "x"}])
    assert e.value.field == "items[0].pdq"
    with pytest.raises(InvalidInput) as e:
        store.get("missing")
    assert e.value.code == "not_found"
    with pytest.raises(InvalidInput):
        store.create("p", "listing_text")  # exists with another modality
    store.drop("p")
    assert store.names() == []
    store.close()


def test_jsonl_import_rejects_non_objects_and_naive_times(tmp_path: Path) -> None:
    store = BankStore(tmp_path / "banks", CFG)
    store.create("p", "image_pdq")
    h = "ab" * 32
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "pdq": h}) + "\n" + "[1, 2]\n")
    with pytest.raises(InvalidInput) as e:
        store.import_jsonl("p", src)
    assert e.value.field == "line 2" and "object" in e.value.reason
    src.write_text(json.dumps({"id": "a", "pdq": h, "added_at": "2020-07-31T18:47:52"}) + "\n")
    with pytest.raises(InvalidInput) as e:
        store.import_jsonl("p", src)
    assert e.value.field == "line 1.added_at" and "zone" in e.value.reason
    src.write_text(json.dumps({"id": "a", "pdq": h, "added_at": "2020-07-31T18:47:52+02:00"}) + "\n")
    assert store.import_jsonl("p", src) == 1
    assert store.get("p").items()[0].added_at.utcoffset() is not None
    store.close()


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [("yesterday", "ISO 8601"), ("2020-13-45T00:00:00+0000", "ISO 8601"), ("2020-07-31T18:47:52", "zone")],
)
def test_hma_import_rejects_bad_and_naive_timestamps(tmp_path: Path, timestamp: str, reason: str) -> None:
    src = tmp_path / "hma.csv"
    src.write_text(HMA_LINE + f"{'cd' * 32},42,{timestamp},tag\n")
    store = BankStore(tmp_path / "banks", CFG)
    store.create("te-pdq", "image_pdq")
    with pytest.raises(InvalidInput) as e:
        store.import_hma_csv("te-pdq", src)
    assert e.value.field == "line 2.timestamp" and reason in e.value.reason
    store.close()


def test_hma_import_accepts_zoned_iso_and_reports_bad_ids(tmp_path: Path) -> None:
    src = tmp_path / "hma.csv"
    src.write_text(f"{'cd' * 32},42,2020-07-31T20:47:52+02:00,tag\n")
    store = BankStore(tmp_path / "banks", CFG)
    store.create("te-pdq", "image_pdq")
    assert store.import_hma_csv("te-pdq", src) == 1
    assert store.get("te-pdq").items()[0].added_at.utcoffset() is not None
    src.write_text(f"{'cd' * 32},{'x' * 200},2020-07-31T18:47:52+0000,tag\n")
    with pytest.raises(InvalidInput) as e:
        store.import_hma_csv("te-pdq", src)
    assert e.value.field == "line 1.id"
    store.close()


# ---- review banks: texts, nearest items, the text model, the folder lock -------------------------


def _review_banks(root: Path, n: int = 30) -> tuple[BankStore, np.ndarray]:
    from tests.signals.test_review_text import corpus

    texts, labels, vecs = corpus(n)
    store = BankStore(root, CFG)
    store.create("fakes", "review_text", "fraud")
    store.create("genuine", "review_text", "benign")
    for bank, want in (("fakes", True), ("genuine", False)):
        store.add_items(bank, [{"id": f"r{i}", "vector": vecs[i].tolist(), "text": texts[i]}
                               for i in range(n) if labels[i] == want])
    return store, vecs


def test_review_bank_keeps_texts_and_exports_them(tmp_path: Path) -> None:
    store, _ = _review_banks(tmp_path / "banks")
    items = {it.id: it for it in store.get("fakes").items()}
    assert items["r0"].text is not None and items["r0"].text.endswith("!")
    store.export_jsonl("fakes", tmp_path / "fakes.jsonl")
    first = json.loads((tmp_path / "fakes.jsonl").read_text().splitlines()[0])
    assert first["text"] and first["kind"] == "fraud"
    store.close()


def test_nearest_ignores_the_threshold_and_disabled_banks(tmp_path: Path) -> None:
    store, vecs = _review_banks(tmp_path)
    near = store.nearest("review_text", vecs[:1], k=3)[0]
    assert len(near) == 6  # three from each bank, whatever their similarity
    assert near[0].item_id == "r0" and near[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [h.similarity for h in near] == sorted((h.similarity for h in near), reverse=True)
    store.set_enabled("genuine", False)
    assert {h.bank for h in store.nearest("review_text", vecs[:1], k=3)[0]} == {"fakes"}
    with pytest.raises(InvalidInput):
        store.nearest("image_pdq", vecs[:1])
    store.close()


def test_review_text_model_is_fitted_saved_reloaded_and_refitted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import indexes.banks as banks

    store, vecs = _review_banks(tmp_path, 40)
    model = store.review_text_model()
    assert model is not None and (model.n_fraud, model.n_benign) == (20, 20)
    assert store.review_text_model() is model  # no change, no refit
    assert (tmp_path / "review_text_model.json").exists() and (tmp_path / "review_text_model.npz").exists()
    store.close()

    fits: list[str] = []
    real_fit = banks.fit_review_text_model
    monkeypatch.setattr(banks, "fit_review_text_model",
                        lambda *a, **k: fits.append(a[3]) or real_fit(*a, **k))
    again = BankStore(tmp_path, CFG)
    loaded = again.review_text_model()
    assert loaded is not None and loaded.fingerprint == model.fingerprint and not fits  # loaded, not refitted
    again.remove_items("fakes", ["r0"])
    changed = again.review_text_model()
    assert changed is not None and changed.fingerprint != model.fingerprint and len(fits) == 1
    again.set_enabled("genuine", False)
    assert again.review_text_model() is None  # one kind left: nothing to learn
    again.close()


def test_review_judge_verdicts(tmp_path: Path) -> None:
    from indexes.banks import ReviewBankJudge

    store, vecs = _review_banks(tmp_path, 40)
    judge = ReviewBankJudge([(store, None)])
    assert judge.active
    v = judge.verdicts(vecs[:2], ["amazing best luxury perfect", "room floor desk parking"])
    assert all(x.fake_probability is not None and x.vote_probability is not None for x in v)
    assert v[0].fake_probability > v[1].fake_probability  # type: ignore[operator]
    hidden = ReviewBankJudge([(store, lambda bank: bank != "fakes")])
    assert {n[0] for n in hidden.verdicts(vecs[:1], ["x y z"])[0].neighbours} == {"genuine"}
    store.close()
    empty = BankStore(tmp_path / "empty", CFG)
    assert not ReviewBankJudge([(empty, None)]).active
    empty.close()


def test_a_bank_folder_has_one_writer(tmp_path: Path) -> None:
    store = BankStore(tmp_path, CFG)
    with pytest.raises(InvalidInput, match="another writer"):
        BankStore(tmp_path, CFG)
    store.close()
    BankStore(tmp_path, CFG).close()  # released on close


def test_readers_share_a_bank_folder_change_nothing_and_keep_writers_out(tmp_path: Path) -> None:
    store, vecs = _review_banks(tmp_path, 40)
    store.close()  # the model not fitted yet: a reader fits it for itself and keeps nothing
    readers = [BankStore(tmp_path, CFG, read_only=True) for _ in range(2)]
    models = [r.review_text_model() for r in readers]
    assert models[0] is not None and models[1] is not None and models[0].fingerprint == models[1].fingerprint
    assert not (tmp_path / "review_text_model.json").exists()
    assert readers[1].nearest("review_text", vecs[:1], k=1)[0][0].item_id == "r0"
    for change in (lambda r: r.add_items("fakes", [{"id": "x", "vector": vecs[0].tolist()}]),
                   lambda r: r.remove_items("fakes", ["r0"]), lambda r: r.set_enabled("fakes", False),
                   lambda r: r.create("more", "review_text"), lambda r: r.drop("fakes")):
        with pytest.raises(InvalidInput, match="read-only"):
            change(readers[0])
    lines = tmp_path / "more.jsonl"
    lines.write_text('{"id": "y", "vector": ' + json.dumps(vecs[1].tolist()) + '}\n')
    with pytest.raises(InvalidInput, match="read-only"):
        readers[0].import_jsonl("fakes", lines)
    with pytest.raises(InvalidInput, match="read-only"):
        readers[0].import_hma_csv("fakes", lines)
    with pytest.raises(InvalidInput, match="another writer"):
        BankStore(tmp_path, CFG)
    for r in readers:
        r.close()
    writer = BankStore(tmp_path, CFG)
    assert len(writer.get("fakes")) == 20  # nothing a reader was refused reached the folder
    writer.close()
