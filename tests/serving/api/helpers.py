"""Records and images for the service tests."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def photo_b64(seed: int, size: tuple[int, int] = (400, 300)) -> str:
    """A JPEG of random shapes: different seeds are different photos to PDQ and SSCD."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(x) for x in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(25):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        w, h = int(rng.integers(20, 160)), int(rng.integers(20, 120))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x, y, x + w, y + h), fill=colour)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


TITLES = [
    "Apple AirPods Pro 2nd generation with MagSafe case, sealed",
    "Vintage oak dining table with six chairs, collection only",
    "Trek Marlin 7 mountain bike 2022, size L, hydraulic brakes",
    "Canon EOS R6 body only, shutter count 12k, boxed",
    "Hand-knitted wool scarf, charcoal grey, 180 cm long",
    "LEGO Technic Porsche 911 GT3 RS 42056, complete with manual",
    "Dyson V11 cordless vacuum cleaner with two batteries",
    "Children's wooden rocking horse, hand painted",
    "Nintendo Switch OLED white, two controllers and Mario Kart",
]


def listing(lid: str, seller: str, *, title: int = 0, image: int | None = 3, price: float = 39.0,
            **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "listing_id": lid, "seller_id": seller, "title": TITLES[title],
        "description": "Brand new sealed, ships today. Best price guaranteed.",
        "price": price, "currency": "USD", "category": "audio"}
    if image is not None:
        rec["images"] = [{"data_b64": photo_b64(image)}]
    rec.update(extra)
    return rec


def review(rid: str, reviewer: str, product: str = "P1", text: str = "Great product, fast shipping, "
           "works perfectly, highly recommend this seller to everyone!", **extra: Any) -> dict[str, Any]:
    return {"review_id": rid, "product_id": product, "seller_id": "S1", "reviewer_id": reviewer, "rating": 5,
            "text": text, "created_at": "2026-11-24T15:00:00Z", **extra}


def signal(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in doc["signals"] if s["name"] == name]
    assert found, f"no {name} in {[s['name'] for s in doc['signals']]}"
    return found[0]


def text_photo_b64(text: str, size: tuple[int, int] = (640, 240)) -> str:
    """A JPEG of dark text on white (what the OCR of the deep tier reads)."""
    from PIL import ImageFont

    font_path = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
    try:
        font: Any = ImageFont.truetype(font_path, 36)
    except OSError:
        font = ImageFont.load_default(36)
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((20, size[1] // 2 - 24), text, fill="black", font=font)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    return base64.b64encode(buf.getvalue()).decode()
