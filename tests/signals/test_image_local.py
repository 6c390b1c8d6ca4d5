"""``image_local``: the shared extractor contract, and what the stored block holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from PIL import ImageOps

from signals.config import LocalFeaturesConfig
from signals.extractor import Extractor
from signals.image_local import LocalFeatureExtractor, unpack_local_features
from signals.schemas import Listing
from tests.signals.extractor_contract import ExtractorContract
from tests.signals.image_helpers import decoder, encode, listing, textured_photo
from tests.signals.test_image_pdq_sscd import _bad_items, _good_items


class TestLocalFeaturesContract(ExtractorContract):
    per_image_features: ClassVar[tuple[str, ...]] = LocalFeatureExtractor.per_image_features
    hash_features: ClassVar[tuple[str, ...]] = ("image_local",)

    def make_extractor(self) -> Extractor:
        return LocalFeatureExtractor(decoder(), LocalFeaturesConfig())

    def good_items(self) -> Sequence[Listing]:
        return _good_items()

    def bad_items(self) -> Sequence[Listing]:
        return _bad_items()


def test_the_mirror_set_is_the_mirror_images_keypoints() -> None:
    im = textured_photo(7, (320, 240))
    ex = LocalFeatureExtractor(decoder(), LocalFeaturesConfig(keypoints=64))
    block, mirrored = (ex.extract(listing(f"L{i}", [encode(x)])).features["image_local"][0]
                       for i, x in enumerate((im, ImageOps.mirror(im))))
    assert block.shape == (2, 64, 36)
    # The mirror set of an image is the plain set of its mirror image (same frame, same points).
    pts_m, desc_m = unpack_local_features(block, mirror=True)
    pts_p, desc_p = unpack_local_features(mirrored, mirror=False)
    assert len(pts_m) == len(pts_p) > 0
    assert np.allclose(pts_m, pts_p, atol=1 / 32) and (desc_m == desc_p).mean() > 0.99
