"""PDQ (ThreatExchange hex) and SSCD descriptors: the extractor contract plus their own checks."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageEnhance

from signals.errors import InvalidInput
from signals.extractor import Extractor
from signals.image_pdq import PdqExtractor, pack_bits, pdq_of_rgb
from signals.image_sscd import SscdDistilledExtractor, SscdExtractor, SscdModel
from signals.pdq_hash import hamming, pdq_from_hex, pdq_to_hex
from signals.schemas import Listing
from tests.signals.extractor_contract import ExtractorContract
from tests.signals.image_helpers import (
    decoder,
    encode,
    listing,
    photo,
    real_photo,
    sscd_embedder,
)

# pdqhash's published test vector for its image10.jpg, produced by ThreatExchange's own
# C++ tools ("pdq-photo-hasher | hashtool256 bits"): bit 255 first.
KNOWN_BITS = np.array([int(c) for c in (
    "0001110000000111011000110110001110000000100111101101111111100100"
    "0111000000011011100010011010011000110110110111011110001100000010"
    "1001100010111100010101011100111101100010101111001000100110010011"
    "0101111101110011111101011000110001000010011101010001110011000110"
)])
# ThreatExchange prints Hash256 as its 16-bit words w[15] .. w[0], "%04x" each.
KNOWN_HEX = "1c076363809edfe4701b89a636dde30298bc55cf62bc89935f73f58c42751cc6"


def _good_items() -> list[Listing]:
    return [listing("L1", [encode(photo(1))]),
            listing("L2", [encode(photo(2), "JPEG"), encode(photo(3))]),
            listing("L3", [encode(photo(4), "WEBP")]),
            listing("L4", [])]


def _bad_items() -> list[Listing]:
    return [listing("LBAD", [encode(photo(5)), b"GIF89a but not really"])]


class TestPdqContract(ExtractorContract):
    per_image_features: ClassVar[tuple[str, ...]] = PdqExtractor.per_image_features
    hash_features: ClassVar[tuple[str, ...]] = ("image_pdq", "image_pdq_flip", "image_pdq_trimmed")

    def make_extractor(self) -> Extractor:
        return PdqExtractor(decoder())

    def good_items(self) -> Sequence[Listing]:
        return _good_items()

    def bad_items(self) -> Sequence[Listing]:
        return _bad_items()


class TestSscdDistilledContract(ExtractorContract):
    per_image_features: ClassVar[tuple[str, ...]] = SscdDistilledExtractor.per_image_features
    unit_features: ClassVar[tuple[str, ...]] = ("image_sscd_distilled", "image_sscd_distilled_regions")

    def make_extractor(self) -> Extractor:
        return SscdDistilledExtractor(decoder(), sscd_embedder("sscd_distilled"))

    def good_items(self) -> Sequence[Listing]:
        return _good_items()

    def bad_items(self) -> Sequence[Listing]:
        return _bad_items()


def test_known_threatexchange_vector_hex_round_trip() -> None:
    assert len(KNOWN_BITS) == 256
    packed = pack_bits(KNOWN_BITS)
    hex_ = pdq_to_hex(packed)
    # HMA/python-threatexchange's conversion: the bits as one big-endian integer, 64 hex digits.
    assert hex_ == format(int("".join(map(str, KNOWN_BITS)), 2), "064x")
    assert hex_ == KNOWN_HEX
    words = [int("".join(map(str, KNOWN_BITS[i:i + 16])), 2) for i in range(0, 256, 16)]
    assert hex_ == "".join(format(w, "04x") for w in words)
    assert np.array_equal(pdq_from_hex(hex_.upper()), packed)
    assert np.array_equal(np.unpackbits(pdq_from_hex(hex_)), KNOWN_BITS)
    with pytest.raises(InvalidInput) as e:
        pdq_from_hex("abc", "images[0].pdq")
    assert e.value.field == "images[0].pdq"
    with pytest.raises(InvalidInput) as e:
        pdq_to_hex(packed[:31])
    assert e.value.field == "pdq"


def test_hamming_of_two_hashes_and_of_rows_against_one() -> None:
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 256, (6, 32), dtype=np.uint8)
    want = [int(np.unpackbits(r ^ rows[0]).sum()) for r in rows]
    assert hamming(rows, rows[0]).tolist() == want
    assert int(hamming(rows[1], rows[0])) == want[1]
    assert hamming(rows[0], rows[0]) == 0
    assert int(hamming(np.zeros(32, np.uint8), np.full(32, 255, np.uint8))) == 256
    with pytest.raises(InvalidInput) as e:
        hamming(rows.astype(np.int64), rows[0])
    assert e.value.field == "a"
    with pytest.raises(InvalidInput) as e:
        hamming(rows, rows[0, :16])
    assert e.value.field == "b"


def test_pdq_of_an_image_matches_pdqhash_and_flags_weak_hashes() -> None:
    rgb = np.asarray(photo(11, (320, 240)))
    h = pdq_of_rgb(rgb)
    vector, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    assert h.hex == format(int("".join(str(int(b)) for b in vector), 2), "064x")
    assert h.quality == quality and not h.weak
    flat = pdq_of_rgb(np.full((64, 64, 3), 128, np.uint8))
    assert flat.weak and flat.quality < 50


def test_pdq_mirror_hash_matches_a_flipped_copy() -> None:
    rgb = np.asarray(photo(12, (320, 240)))
    h = pdq_of_rgb(rgb)
    flipped = pdq_of_rgb(np.ascontiguousarray(rgb[:, ::-1]))
    assert hamming(h.bits, flipped.bits) > 60  # PDQ alone does not survive a mirror ...
    assert hamming(h.mirror, flipped.bits) <= 31  # ... the mirror hash does


def test_pdq_features_layout() -> None:
    r = PdqExtractor(decoder()).extract(listing("L1", [encode(photo(1)), encode(photo(2))]))
    assert r.features["image_pdq"].shape == (2, 32) and r.features["image_pdq"].dtype == np.uint8
    assert r.features["image_pdq_quality"].shape == (2,)


@pytest.mark.parametrize("model", ["sscd_distilled", "sscd"])
def test_sscd_shape_norm_and_copy_closer_than_unrelated(model: SscdModel) -> None:
    base, unrelated = real_photo("china.jpg"), real_photo("flower.jpg")
    if base is None or unrelated is None:
        pytest.skip("no real photo available (scikit-learn's sample images or shared data)")
    emb = sscd_embedder(model)
    w, h = base.size
    copy = ImageEnhance.Brightness(base.crop((40, 30, w - 40, h - 30))).enhance(1.25)
    copy = Image.open(io.BytesIO(encode(copy.resize((w // 2, h // 2)), "JPEG", quality=30)))
    vecs = emb.embed([np.asarray(base), np.asarray(copy.convert("RGB")), np.asarray(unrelated)])
    assert vecs.shape == (3, 512) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert vecs[0] @ vecs[1] > 0.6 and vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3


def test_full_sscd_extractor_feature_name() -> None:
    r = SscdExtractor(decoder(), sscd_embedder("sscd")).extract(listing("L1", [encode(photo(1))]))
    assert set(r.features) == {"image_sscd", "image_sscd_regions"}
    assert r.features["image_sscd"].shape == (1, 512)
    assert r.features["image_sscd_regions"].shape == (1, 5, 512)


def test_image_extractors_share_one_decode() -> None:
    dec = decoder()
    items = _good_items()
    PdqExtractor(dec).extract_batch(items)
    SscdDistilledExtractor(dec, sscd_embedder("sscd_distilled")).extract_batch(items)
    assert dec.decodes == 4  # four distinct images, decoded once for both extractors
