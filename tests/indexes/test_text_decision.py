"""The shipped listing-text decision on marketplace titles: real MiniLM vectors, the shipped scorer.

What must hold whatever the scorer is refitted on: unrelated titles that share only a size
("1 Kg", "0.5 mm") are not near-duplicates; a copy with a bait price is; a title copied
with a word changed is, in Indonesian and in other scripts. The decision runs exactly as
the batch job and the service run it (``candidates`` then ``decide`` over one index).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from indexes.config import NearDuplicateConfig, VectorIndexConfig
from indexes.near_duplicates import TextNearDuplicates, load_pair_scorer
from indexes.pair_features import PairRecord, ParsedRecords
from indexes.vector import VectorIndex

MODELS_DIR = Path(__file__).resolve().parents[2] / "var" / "models"

CATALOGUE: dict[str, PairRecord] = {
    # Indonesian: a title and a seller's copy of it with one word changed.
    "madu": PairRecord("Madu Hutan Asli Lumora 1 Kg Murah"),
    "madu-edit": PairRecord("Madu Hutan Murni Lumora 1 Kg Murah"),
    # Unrelated products sharing only a size.
    "beras": PairRecord("Beras Pandan Wangi Zentika 1 Kg"),
    "gula": PairRecord("Gula Pasir Putih Kiraso 1 Kg"),
    "kopi": PairRecord("Kopi Bubuk Robusta Temanggung 1 Kg"),
    "pensil": PairRecord("Isi Pensil Mekanik Rotaku 0.5 mm"),
    "kabel": PairRecord("Kabel Tembaga Serabut Bavono 0.5 mm"),
    # A listing and its bait-priced repost: the very text at a tenth of the price.
    "sepatu": PairRecord("Sepatu Lari Pria Velaro Hitam 42 Original", price=350_000.0),
    "sepatu-bait": PairRecord("Sepatu Lari Pria Velaro Hitam 42 Original", price=35_000.0),
    # Other scripts: a Vietnamese and a Russian title with a word changed, a Thai copy with a word added.
    "vi": PairRecord("Mật Ong Rừng Nguyên Chất Kavito 500gr Giá Rẻ"),
    "vi-edit": PairRecord("Mật Ong Rừng Nguyên Chất Kavito 500gr Chính Hãng"),
    "ru": PairRecord("Чехол силиконовый прозрачный Ромико для iPhone 13"),
    "ru-edit": PairRecord("Чехол силиконовый прозрачный Ромико для iPhone 13 новинка"),
    "th": PairRecord("น้ำผึ้งป่าแท้ ตราโมริ 1 Kg"),
    "th-edit": PairRecord("น้ำผึ้งป่าแท้ ตราโมริ 1 Kg ส่งฟรี"),
    # Same type and size, another brand: a different product.
    "vi-other": PairRecord("Mật Ong Rừng Nguyên Chất Sorento 500gr Giá Rẻ"),
}


@pytest.fixture(scope="module")
def decided() -> set[tuple[str, str]]:
    from signals.onnx_export import ensure_exported
    from signals.text_embedding import TextEmbedder, default_model_dir

    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    ensure_exported(default_model_dir(), MODELS_DIR, "minilm", threads=2)
    embedder = TextEmbedder("onnx", quantization="int8", cache_dir=MODELS_DIR, threads=2)
    ids = list(CATALOGUE)
    vecs = embedder.embed([CATALOGUE[i].title for i in ids])
    index = VectorIndex(VectorIndexConfig(dim=vecs.shape[1], quantization="none"))
    index.add(ids, vecs)
    rule = TextNearDuplicates(NearDuplicateConfig(), 0.9, load_pair_scorer("default"))

    def parsed_of(some: list[str]) -> ParsedRecords:
        return ParsedRecords.parse([CATALOGUE[i] for i in some])

    found = rule.decide(parsed_of(ids), rule.candidates(index, vecs, ids), parsed_of)
    return {tuple(sorted((q, h.id))) for q, hits in zip(ids, found, strict=True) for h in hits}  # type: ignore[misc]


@pytest.mark.parametrize("pair", [("beras", "gula"), ("beras", "kopi"), ("gula", "kopi"), ("beras", "madu"),
                                  ("gula", "madu"), ("kabel", "pensil"), ("th", "beras")])
def test_a_shared_size_alone_does_not_pair(decided: set[tuple[str, str]], pair: tuple[str, str]) -> None:
    assert tuple(sorted(pair)) not in decided


def test_a_bait_priced_copy_still_pairs(decided: set[tuple[str, str]]) -> None:
    assert ("sepatu", "sepatu-bait") in decided


@pytest.mark.parametrize("pair", [("madu", "madu-edit"), ("vi", "vi-edit"), ("ru", "ru-edit"),
                                  ("th", "th-edit")])
def test_a_multilingual_near_copy_pairs(decided: set[tuple[str, str]], pair: tuple[str, str]) -> None:
    assert tuple(sorted(pair)) in decided


@pytest.mark.xfail(strict=True, reason="known limit (docs/indexes.md): titles the same but for the "
                   "brand, in a neighbourhood too small to tell which words are rare, still pair")
def test_another_brand_of_the_same_thing_does_not_pair(decided: set[tuple[str, str]]) -> None:
    assert ("vi", "vi-other") not in decided and ("vi-edit", "vi-other") not in decided


def test_a_bait_price_does_not_make_a_copy_of_another_product() -> None:
    scorer = load_pair_scorer("default")
    assert scorer is not None
    # The price-blind copy question is asked only of titles this alike (character 3-grams).
    assert NearDuplicateConfig().text_copy_title_similarity is not None
    cheap = PairRecord("Sepatu Lari Pria Velaro Hitam 42 Original", price=35_000.0)
    other = PairRecord("Sandal Jepit Wanita Kirana Merah 38", price=350_000.0)
    from indexes.pair_features import feature_matrix

    x = feature_matrix([(cheap, other)], [0.5])
    assert (scorer.decision_scores(x, 0.9) < scorer.threshold).all()
