"""Border and frame trimming (``signals.image_decode.content_box``) and what it buys SSCD and PDQ."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from signals.image_decode import content_box, trim_borders
from signals.image_pdq import pdq_of_rgb
from signals.pdq_hash import hamming
from tests.signals.image_helpers import font, real_photo, sscd_embedder, textured_photo


def _padded(im: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """White padding around a thin dark border, as sellers re-frame photos."""
    inner = 6
    out = ImageOps.expand(ImageOps.expand(im, border=inner, fill=(20, 20, 20)),
                          border=max(im.size) // 8, fill=(255, 255, 255))
    pad = max(im.size) // 8 + inner
    return out, (pad, pad, pad + im.size[0], pad + im.size[1])


def _screenshot(im: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A phone screenshot: status bar with text, grey margins, a caption under the photo."""
    w, h = im.size
    canvas = Image.new("RGB", (w + 60, h * 3 // 2), (242, 242, 242))
    d = ImageDraw.Draw(canvas)
    bar = h // 12
    d.rectangle((0, 0, canvas.size[0], bar), fill=(25, 25, 25))
    d.text((8, bar // 4), "9:41  5G  64%", fill="white", font=font(max(8, bar // 2)))
    top = bar + h // 10
    canvas.paste(im, (30, top))
    d.text((10, top + h + h // 20), "Brand new, $40, message me", fill="black",
           font=font(max(10, w // 22)))
    return canvas, (30, top, 30 + w, top + h)


def _assert_close(box: tuple[int, int, int, int], want: tuple[int, int, int, int],
                  slack: int) -> None:
    assert all(abs(a - b) <= slack for a, b in zip(box, want, strict=True)), (box, want)


@pytest.mark.parametrize("which", ["synthetic", "real", "real_large"])
def test_padding_is_trimmed_back_to_the_photo(which: str) -> None:
    if which == "synthetic":
        im = textured_photo(21)
    else:
        real = real_photo("china.jpg")
        if real is None:
            pytest.skip("no real photo available")
        im = real if which == "real" else real.resize((1400, 934))
    framed, want = _padded(im)
    step = -(-max(framed.size) // 192)  # content_box works on a strided sample
    _assert_close(content_box(np.asarray(framed)), want, slack=step)


def test_screenshot_chrome_and_caption_are_trimmed_back_to_the_photo() -> None:
    im = textured_photo(22, (320, 240))
    shot, want = _screenshot(im)
    step = -(-max(shot.size) // 192)
    _assert_close(content_box(np.asarray(shot)), want, slack=step)


def test_a_photo_without_a_frame_is_left_untouched() -> None:
    rgb = np.asarray(textured_photo(23, (300, 200)))
    assert content_box(rgb) == (0, 0, 300, 200)
    assert trim_borders(rgb) is rgb  # no copy either
    real = real_photo("china.jpg")
    if real is not None:
        arr = np.asarray(real)
        assert content_box(arr) == (0, 0, arr.shape[1], arr.shape[0])


def test_a_mostly_uniform_photo_is_not_trimmed_to_nothing() -> None:
    # A small object on a plain backdrop: trimming to it would keep under min_keep.
    im = Image.new("RGB", (400, 300), (250, 250, 250))
    ImageDraw.Draw(im).ellipse((180, 130, 220, 170), fill=(200, 30, 30))
    assert content_box(np.asarray(im)) == (0, 0, 400, 300)
    flat = np.full((120, 160, 3), 128, np.uint8)
    assert content_box(flat) == (0, 0, 160, 120)
    # A detailed band that is not thin is content, not a caption: the margins around it go,
    # it stays (peeling it as a caption would leave nothing, hence no trim at all).
    band = textured_photo(24, (300, 150))
    canvas = Image.new("RGB", (300, 300), (255, 255, 255))
    canvas.paste(band, (0, 120))
    step = -(-300 // 192)
    _assert_close(content_box(np.asarray(canvas)), (0, 120, 300, 270), slack=step)


def test_jpeg_noise_on_the_frame_is_tolerated() -> None:
    import io

    framed, want = _padded(textured_photo(25, (320, 240)))
    buf = io.BytesIO()
    framed.save(buf, "JPEG", quality=40)
    noisy = np.asarray(Image.open(buf).convert("RGB"))
    step = -(-max(framed.size) // 192)
    # JPEG ringing may keep the thin dark border (6 pixels) as content; no more than that.
    _assert_close(content_box(noisy), want, slack=step + 6)


def test_trimming_brings_a_framed_copy_back_to_its_original() -> None:
    base = real_photo("flower.jpg")
    if base is None:
        pytest.skip("no real photo available")
    framed = np.asarray(_screenshot(base)[0])
    orig = np.asarray(base)
    emb = sscd_embedder("sscd_distilled")
    assert emb.trim
    with_trim = emb.embed([orig, framed])
    emb.trim = False
    try:
        without = emb.embed([orig, framed])
    finally:
        emb.trim = True
    assert with_trim[0] @ with_trim[1] > 0.9 > without[0] @ without[1] + 0.1
    h_orig, h_framed = pdq_of_rgb(orig), pdq_of_rgb(framed)
    assert np.array_equal(h_orig.trimmed, h_orig.bits)  # nothing to trim
    assert hamming(h_orig.bits, h_framed.bits) > 70  # the plain hash misses the copy ...
    assert hamming(h_orig.bits, h_framed.trimmed) <= 31  # ... the trimmed one matches
