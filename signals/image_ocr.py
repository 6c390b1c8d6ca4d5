"""OCR of listing images, fed to the content rules (deep tier).

Sellers put phone numbers and messaging handles inside product photos, where text
rules cannot see them. This extractor reads the text of each image with
``rapidocr-onnxruntime`` (PP-OCRv4 detection and recognition, shipped in the
package; nothing is downloaded) and hands it to the content rules' own matcher,
so ``content.offplatform_contact`` fires from images with evidence
``{"source": "ocr", "image": i, ...}``; contact matching is never duplicated here.

Cost: full OCR is hundreds of milliseconds an image on 2 cores, so this is a
"deep" tier extractor that serving runs asynchronously, and it skips images
without text cheaply: a *text gate* first runs only the text detector on a small
copy of the image (``gate_side`` pixels on the long side) and recognition runs
only where it finds a text box. Its cost and miss rate are measured by
``benchmarks/images.py``.

The image is read at most ``max_side`` pixels on the long side. rapidocr's own
default upscales the short side to 736 pixels, which made a 600x200 banner cost
1.7 s; we never upscale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image

from signals.config import ContentRulesConfig, OcrConfig
from signals.extractor import ItemResult
from signals.image_decode import DecodedImage, ImageDecoder
from signals.image_extractor import ImageExtractor
from signals.schemas import Listing

if TYPE_CHECKING:
    from signals.content_rules import Finding

_MAX_EVIDENCE = 20

# The content rules' matcher for a plain string: (text, field name, tenant) -> findings.
ContactFinder = Callable[[str, str, str], "Sequence[Finding]"]


@dataclass(frozen=True)
class OcrText:
    """What OCR read in one image: its lines (above the score threshold), or nothing."""

    lines: tuple[str, ...]
    gated_out: bool  # the text gate found no text, so recognition did not run

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    im = Image.fromarray(rgb, "RGB").resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(im)


class OcrEngine:
    """rapidocr with explicit threads, a text gate, and no upscaling."""

    def __init__(self, threads: int = 2, max_side: int = 1280, gate_side: int = 480,
                 gate: Literal["detector", "none"] = "detector",
                 min_text_score: float = 0.5) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # pragma: no cover - an install problem, reported clearly
            raise RuntimeError("OCR needs rapidocr-onnxruntime: pip install rapidocr-onnxruntime "
                               "(and opencv-python-headless; see the Makefile)") from exc
        # "max": rapidocr never upscales; the image is already at most max_side here.
        self._ocr = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                             det_limit_type="max", text_score=min_text_score)
        self.max_side = max_side
        self.gate_side = gate_side
        self.gate = gate

    def has_text(self, rgb: np.ndarray) -> bool:
        """The cheap gate: does the text detector find any box on a small copy?"""
        small = np.ascontiguousarray(_shrink(rgb, self.gate_side)[:, :, ::-1])
        boxes, _ = self._ocr.text_det(small)
        return boxes is not None and len(boxes) > 0

    def read(self, rgb: np.ndarray) -> OcrText:
        """The lines of text in an (h, w, 3) uint8 RGB image, gate first."""
        if self.gate == "detector" and not self.has_text(rgb):
            return OcrText((), gated_out=True)
        # rapidocr works in OpenCV's BGR order.
        bgr = np.ascontiguousarray(_shrink(rgb, self.max_side)[:, :, ::-1])
        result, _ = self._ocr(bgr)
        lines = tuple(str(r[1]) for r in (result or []) if str(r[1]).strip())
        return OcrText(lines, gated_out=False)


def build_ocr_engine(config: OcrConfig) -> OcrEngine:
    return OcrEngine(config.threads, config.max_side, config.gate_side, config.text_gate,
                     config.min_text_score)


def content_rules_finder(config: ContentRulesConfig) -> ContactFinder:
    """The content rules' own matcher (``ContentRules.scan``) over OCR text: one source of
    truth for what a phone number, email, URL or messaging handle looks like."""
    from signals.content_rules import ContentRules

    rules = ContentRules(config)

    def find(text: str, field: str, tenant: str) -> Sequence[Finding]:
        return rules.scan(text, field, tenant).contacts

    return find


class OcrExtractor(ImageExtractor[OcrText]):
    """``content.offplatform_contact`` from the text inside a listing's images."""

    name: ClassVar[str] = "image_ocr"
    version: ClassVar[int] = 1
    emits: ClassVar[tuple[str, ...]] = ("content.offplatform_contact",)
    tier: ClassVar[Literal["fast", "deep"]] = "deep"

    def __init__(self, decoder: ImageDecoder, engine: OcrEngine,
                 find_contacts: ContactFinder) -> None:
        super().__init__(decoder)
        self.engine = engine
        self.find_contacts = find_contacts

    def _run(self, images: Sequence[DecodedImage]) -> list[OcrText]:
        return [self.engine.read(im.rgb) for im in images]

    def _assemble(self, item: Listing, images: Sequence[DecodedImage],
                  outputs: Sequence[OcrText], observed_at: datetime) -> ItemResult:
        from signals.content_rules import contact_score

        if not images:
            return ItemResult(item.entity_id)
        findings: list[Finding] = []
        matches: list[dict[str, Any]] = []
        for im, ocr in zip(images, outputs, strict=True):
            if not ocr.lines:
                continue
            # The field is the image, so evidence spans point into that image's OCR text.
            for f in self.find_contacts(ocr.text, im.field, item.tenant):
                findings.append(f)
                matches.append({**f.to_evidence(), "source": "ocr", "image": im.index})
        distinct = {(f.kind, f.normalized) for f in findings}
        evidence: dict[str, Any] = {
            "source": "ocr",
            "images_read": sum(1 for o in outputs if not o.gated_out),
            "images_without_text": sum(1 for o in outputs if not o.lines),
        }
        if matches:
            evidence["image"] = matches[0]["image"]
            evidence["matches"] = matches[:_MAX_EVIDENCE]
        sig = self.signal(item, "content.offplatform_contact", len(distinct), observed_at,
                          score=contact_score(findings), evidence=evidence)
        return ItemResult(item.entity_id, signals=[sig])
