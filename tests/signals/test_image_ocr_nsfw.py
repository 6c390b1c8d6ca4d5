"""Deep-tier image extractors: OCR feeding the content rules, and NSFW detection."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from signals.config import ContentRulesConfig
from signals.extractor import Extractor
from signals.image_nsfw import NsfwExtractor
from signals.image_ocr import ContactFinder, OcrExtractor, content_rules_finder
from signals.schemas import Listing
from tests.signals.extractor_contract import ExtractorContract
from tests.signals.image_helpers import (
    decoder,
    encode,
    listing,
    nsfw_detector,
    ocr_engine,
    photo,
    real_photo,
    text_image,
)

PHONE = "+1 415 555 0132"


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


@functools.cache
def _finder() -> ContactFinder:
    # The real content rules: OCR must not carry its own idea of a phone number.
    return content_rules_finder(ContentRulesConfig())


def _phone_photo() -> bytes:
    im = photo(31, (800, 400))
    banner = text_image(f"WhatsApp {PHONE}", (760, 90), 40)
    im.paste(banner, (20, 290))
    return encode(im, "JPEG", quality=92)


class TestOcrContract(ExtractorContract):
    def make_extractor(self) -> Extractor:
        return OcrExtractor(decoder(), ocr_engine(), _finder())

    def good_items(self) -> Sequence[Listing]:
        return [listing("L1", [encode(photo(1))]), listing("L2", [_phone_photo()]),
                listing("L3", [encode(photo(3), "JPEG")]), listing("L4", [])]

    def bad_items(self) -> Sequence[Listing]:
        return [listing("LBAD", [b"\x00" * 64])]


class TestNsfwContract(ExtractorContract):
    def make_extractor(self) -> Extractor:
        return NsfwExtractor(decoder(), nsfw_detector())

    def good_items(self) -> Sequence[Listing]:
        return [listing("L1", [encode(photo(1))]), listing("L2", [encode(photo(2)), encode(photo(3))]),
                listing("L3", [encode(photo(4), "JPEG")])]

    def bad_items(self) -> Sequence[Listing]:
        return [listing("LBAD", [b"BM not a bitmap"])]


def test_deep_tier_is_declared() -> None:
    assert OcrExtractor.tier == "deep" and NsfwExtractor.tier == "deep"


def test_ocr_reads_a_rendered_phone_number() -> None:
    out = ocr_engine().read(np.asarray(text_image(f"Call {PHONE}")))
    assert not out.gated_out
    assert _digits(PHONE) in _digits(out.text), out.lines


def test_text_gate_skips_a_photo_without_text() -> None:
    engine = ocr_engine()
    im = real_photo("flower.jpg") or photo(5, (640, 480))
    assert not engine.has_text(np.asarray(im))
    assert engine.read(np.asarray(im)).gated_out
    assert engine.has_text(np.asarray(Image.open(io.BytesIO(_phone_photo()))))


def test_ocr_feeds_the_content_rules_with_evidence_pointing_at_the_image() -> None:
    ex = OcrExtractor(decoder(), ocr_engine(), _finder())
    r = ex.extract(listing("L1", [encode(photo(7)), _phone_photo()]))
    (sig,) = r.signals
    assert sig.name == "content.offplatform_contact" and sig.source == "image_ocr@1"
    assert sig.value >= 1 and sig.score is not None and sig.score > 0.5
    assert sig.evidence["source"] == "ocr" and sig.evidence["image"] == 1
    phones = [c for c in sig.evidence["matches"] if c["kind"] == "phone"]
    assert phones and phones[0]["normalized"] == "+14155550132"
    assert phones[0]["field"] == "images[1]" and phones[0]["source"] == "ocr"
    clean = ex.extract(listing("L2", [encode(photo(8))])).signals[0]
    assert clean.value == 0 and "matches" not in clean.evidence


def test_nsfw_on_benign_photos_is_low() -> None:
    ex = NsfwExtractor(decoder(), nsfw_detector())
    im = real_photo("china.jpg") or photo(9, (640, 480))
    (sig,) = ex.extract(listing("L1", [encode(im, "JPEG")])).signals
    assert sig.name == "image.nsfw" and isinstance(sig.value, float)
    assert sig.value < 0.2 and sig.score is not None and sig.score < 0.2


def test_nsfw_preprocessing_matches_nudenet_reference() -> None:
    from nudenet.nudenet import _read_image  # the package's own preprocessing, as reference

    im = real_photo("flower.jpg") or photo(10, (427, 640))
    rgb = np.asarray(im)
    det = nsfw_detector()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    reference = _read_image(bgr, det.size)[0][0]
    np.testing.assert_allclose(det.preprocess(rgb), reference, atol=1e-6)
