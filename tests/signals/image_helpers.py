"""Small images made on the fly for the image tests, and models loaded once per session.

Models load through ``functools.cache``: one load per test session, shared by every
test module that asks (the effect of a session-scoped fixture without a conftest).
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from signals.config import ImageDecodeConfig, NsfwConfig, OcrConfig, SscdConfig
from signals.image_decode import ImageDecoder
from signals.image_nsfw import NsfwDetector, build_nsfw_detector
from signals.image_ocr import OcrEngine, build_ocr_engine
from signals.image_sscd import SscdEmbedder, SscdModel, build_sscd_embedder
from signals.schemas import Listing, parse_record

ROOT = Path(__file__).resolve().parents[2]
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "images"
FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def encode(im: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def photo(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A deterministic 'photo': smooth colour blobs and edges, distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 90)
        colour = rng.uniform(0, 255, 3)
        mask = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - mask) + colour * mask
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = int(rng.uniform(0, w - 40)), int(rng.uniform(0, h - 40))
        draw.rectangle((x0, y0, x0 + int(rng.uniform(10, 60)), y0 + int(rng.uniform(10, 60))),
                       fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    return im


def textured_photo(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """:func:`photo` with the fine texture and noise real photos have up to their edges
    (``photo`` alone has flat stretches that a border trimmer may rightly treat as frame)."""
    rng = np.random.default_rng(seed + 1000)
    arr = np.asarray(photo(seed, size)).astype(np.float32)
    arr += rng.normal(0, 14, arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for p in FONT_PATHS:
        if Path(p).exists():
            return ImageFont.truetype(p, size)
    return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable


def text_image(text: str, size: tuple[int, int] = (640, 160), font_size: int = 40) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((20, (size[1] - font_size) // 2), text, fill="black",
                            font=font(font_size))
    return im


def listing(listing_id: str, images: list[bytes] | None = None,
            paths: list[str] | None = None) -> Listing:
    refs: list[dict[str, str]] = [{"data_b64": base64.b64encode(b).decode()} for b in images or []]
    refs += [{"path": p} for p in paths or []]
    return parse_record(Listing, {"listing_id": listing_id, "seller_id": "S1",
                                  "title": "a listing", "images": refs})


def real_photo(name: str) -> Image.Image | None:
    """A real photo (``china.jpg`` or ``flower.jpg``): scikit-learn ships both (it comes with
    sentence-transformers); else the shared data's copies; else None. Found without
    importing scikit-learn, which is slow to import."""
    spec = importlib.util.find_spec("sklearn")
    candidates = [Path(loc) / "datasets" / "images" / name
                  for loc in (spec.submodule_search_locations or [])] if spec else []
    candidates.append(SHARED_IMAGES / "photos" / f"scikit_learn__{name}")
    for path in candidates:
        if path.exists():
            return Image.open(path).convert("RGB")
    return None


def decoder() -> ImageDecoder:
    return ImageDecoder(ImageDecodeConfig())


@functools.cache
def sscd_embedder(model: SscdModel = "sscd_distilled") -> SscdEmbedder:
    return build_sscd_embedder(SscdConfig(model=model))


@functools.cache
def ocr_engine() -> OcrEngine:
    return build_ocr_engine(OcrConfig())


@functools.cache
def nsfw_detector() -> NsfwDetector:
    return build_nsfw_detector(NsfwConfig())
