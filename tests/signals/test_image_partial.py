"""A listing with one unusable image still gets the signals of its other images."""

from __future__ import annotations

from signals.image_nsfw import NsfwExtractor
from signals.image_pdq import PdqExtractor
from tests.signals.image_helpers import decoder, encode, listing, nsfw_detector, photo


def test_bad_image_is_named_and_the_good_ones_still_count() -> None:
    good = encode(photo(1))
    mixed = listing("L-mixed", images=[good, b"this is not an image", good])
    clean = listing("L-clean", images=[good])
    ex = NsfwExtractor(decoder(), nsfw_detector())
    res_mixed, res_clean = ex.extract_batch([mixed, clean])
    assert res_mixed.error is not None and res_mixed.error.field == "images[1]"
    assert res_mixed.error.code == "unsupported_media_type"
    [sig] = res_mixed.signals
    assert sig.name == "image.nsfw"
    assert {e["image"] for e in sig.evidence.get("images", [])} <= {0, 2}
    assert res_clean.ok and res_clean.signals[0].name == "image.nsfw"


def test_an_undecodable_image_is_named_and_the_good_ones_keep_their_features() -> None:
    good = encode(photo(2))
    ex = PdqExtractor(decoder())
    mixed, clean = ex.extract_batch([listing("L1", images=[b"GIF89a-truncated", good, b"junk"]),
                                     listing("L2", images=[good, good])])
    assert not mixed.ok and mixed.features["image_pdq"].shape == (1, 32)  # the good photo still matches
    assert mixed.error is not None and mixed.error.field == "images[0]"
    assert "images[2]" in mixed.error.reason  # every bad image is named
    assert clean.ok and clean.features["image_pdq"].shape == (2, 32)


def test_each_image_is_read_and_hashed_once_across_extractors() -> None:
    from signals.config import SignalsConfig
    from signals.registry import build_image_extractors

    config = SignalsConfig()
    config.images.ocr.enabled = False  # the cheap extractors are enough to count reads
    extractors = build_image_extractors(config)
    assert len(extractors) >= 3
    item = listing("L-reads", images=[encode(photo(3)), encode(photo(4))])
    for ex in extractors:
        assert ex.extract(item).ok
    dec = extractors[0].decoder
    assert all(ex.decoder is dec for ex in extractors)
    assert dec.reads == 2 and dec.decodes == 2
    # A new record object with the same bytes is hashed again, but not decoded again.
    again = listing("L-again", images=[encode(photo(3))])
    for ex in extractors:
        ex.extract(again)
    assert dec.reads == 3 and dec.decodes == 2
