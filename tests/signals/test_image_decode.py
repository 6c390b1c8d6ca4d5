"""Safe decoding: every failure mode is an InvalidInput naming the image; good files come out RGB."""

from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from signals.config import ImageDecodeConfig
from signals.errors import InvalidInput
from signals.image_decode import ImageDecoder, decode_image_bytes
from signals.schemas import ImageRef
from tests.signals.image_helpers import SHARED_IMAGES, encode, listing, photo

CFG = ImageDecodeConfig(allow_paths=True)  # path cases are decoded as a batch job would
CORRUPT = SHARED_IMAGES / "imagededup_fixtures" / "mixed_images" / "ukbench09268_corrupt.jpg"


def _error(data: bytes, index: int = 0, cfg: ImageDecodeConfig = CFG) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        decode_image_bytes(data, cfg, index)
    return info.value


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, 1-bit grey, with a tiny IDAT: a bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_corrupt_fixture_jpeg_is_refused_naming_the_image() -> None:
    if not CORRUPT.exists():
        pytest.skip(f"shared data not present: {CORRUPT}")
    err = _error(CORRUPT.read_bytes(), index=2)
    assert err.field == "images[2]"
    assert err.code in ("invalid", "unsupported_media_type")


def test_truncated_jpeg_is_invalid() -> None:
    data = encode(photo(1), "JPEG", quality=90)
    err = _error(data[: len(data) // 2])
    assert err.code == "invalid" and ("truncated" in err.reason.lower() or "corrupt" in err.reason)


def test_bomb_20000_square_raises_before_allocating() -> None:
    # 20,000 x 20,000 = 400 MP claimed by a 100-byte file: refused from the header alone.
    data = _png_header_only(20_000, 20_000)
    assert len(data) < 200
    err = _error(data)
    assert err.code == "too_large" and err.field == "images[0]"


def test_real_compressed_bomb_png_raises(tmp_path: Path) -> None:
    # A real, fully valid 1-bit 20,000 x 20,000 PNG (about 50 KB on disk).
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path, "PNG")
    assert path.stat().st_size < 200_000
    err = _error(path.read_bytes())
    assert err.code == "too_large"


def test_pixel_cap_from_config_and_no_warning_escapes() -> None:
    cfg = ImageDecodeConfig(max_pixels=100 * 100)
    err = _error(encode(Image.new("RGB", (101, 100))), cfg=cfg)
    assert err.code == "too_large" and "10000" in err.reason
    assert decode_image_bytes(encode(Image.new("RGB", (100, 100))), cfg).width == 100


def test_bomb_warning_band_is_an_error_whatever_the_warning_filters() -> None:
    # Between Pillow's MAX_IMAGE_PIXELS (89.5 MP) and twice it Pillow only warns; we raise,
    # without changing the warning filters (process-wide): Pillow's warning is the process's.
    cfg = ImageDecodeConfig(max_pixels=178_956_970)
    bomb = _png_header_only(10_000, 10_000)
    before = list(warnings.filters)
    with pytest.warns(Image.DecompressionBombWarning):
        assert _error(bomb, cfg=cfg).code == "too_large"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _error(bomb, cfg=cfg).code == "too_large"
    assert warnings.filters == before


def test_text_file_named_jpg_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_text("this is not a picture\n" * 20)
    dec = ImageDecoder(CFG)
    with pytest.raises(InvalidInput) as info:
        dec.decode_listing(listing("L1", paths=[str(path)]))
    assert info.value.code == "unsupported_media_type" and info.value.field == "images[0]"


def test_zero_byte_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput) as info:
        ImageDecoder(CFG).decode_listing(listing("L1", paths=[str(path)]))
    assert info.value.field == "images[0].path" and "empty" in info.value.reason
    assert _error(b"").reason == "image is empty"


def test_format_outside_allow_list_is_unsupported() -> None:
    assert _error(encode(photo(2), "TIFF")).code == "unsupported_media_type"


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    d = decode_image_bytes(buf.getvalue(), CFG)
    assert d.format == "GIF" and d.n_frames == 3 and d.rgb.shape == (30, 40, 3)
    r, g, b = d.rgb[15, 20].astype(int)
    assert r > 200 and g < 60 and b < 60  # red: the first frame


def test_16bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    d = decode_image_bytes(data, CFG)
    row = d.rgb[4, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and 120 <= row[128] <= 135  # mid-grey, not white


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    d = decode_image_bytes(data, CFG)
    r, g, b = d.rgb[16, 16].astype(int)
    assert d.rgb.shape == (32, 32, 3) and r > 200 and g < 60 and b < 60


def test_exif_rotated_photo_is_oriented() -> None:
    im = Image.new("RGB", (60, 30), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 30))  # a blue stripe on the left
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    d = decode_image_bytes(encode(im, "JPEG", exif=exif.tobytes(), quality=95), CFG)
    assert (d.width, d.height) == (30, 60) and d.rgb.shape == (60, 30, 3)
    assert d.rgb[3, 15, 2] > 200 and d.rgb[-3, 15, 0] > 200  # blue on top, red at the bottom


def test_alpha_is_flattened_onto_white_and_palette_la_handled() -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image_bytes(encode(transparent), CFG).rgb[0, 0].tolist() == [255, 255, 255]
    la = Image.new("LA", (8, 8), (0, 0))
    assert decode_image_bytes(encode(la), CFG).rgb[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 0, 200, 0] + [0] * 756)
    assert decode_image_bytes(encode(pal), CFG).rgb[0, 0].tolist() == [0, 200, 0]
    bmp = decode_image_bytes(encode(Image.new("1", (9, 9), 1), "BMP"), CFG)
    assert bmp.format == "BMP" and bmp.rgb[0, 0].tolist() == [255, 255, 255]
    webp = decode_image_bytes(encode(photo(3), "WEBP"), CFG)
    assert webp.format == "WEBP" and webp.rgb.dtype == np.uint8


def test_large_photo_is_kept_at_working_size_with_original_dimensions() -> None:
    cfg = ImageDecodeConfig(working_max_side=256)
    d = decode_image_bytes(encode(photo(4, (1600, 1200)), "JPEG"), cfg)
    assert (d.width, d.height) == (1600, 1200) and max(d.rgb.shape[:2]) == 256
    assert not d.rgb.flags.writeable


def test_byte_cap_on_paths(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(photo(5, (512, 512))))
    cfg = ImageDecodeConfig(max_image_bytes=1024, allow_paths=True)
    with pytest.raises(InvalidInput) as info:
        ImageDecoder(cfg).decode_listing(listing("L1", paths=[str(path)]))
    assert info.value.code == "too_large"


def test_missing_path_and_path_rules(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        ImageDecoder(CFG).decode_listing(listing("L1", paths=[str(tmp_path / "nope.jpg")]))
    assert info.value.code == "not_found" and info.value.field == "images[0].path"
    inside = tmp_path / "ok.png"
    inside.write_bytes(encode(photo(6)))
    with pytest.raises(InvalidInput, match="not accepted"):
        ImageDecoder(ImageDecodeConfig()).decode_listing(  # the default: paths are off
            listing("L1", paths=[str(inside)]))
    rooted = ImageDecoder(ImageDecodeConfig(allow_paths=True,
                                            path_roots=[str(tmp_path / "sub")]))
    with pytest.raises(InvalidInput, match="outside"):
        rooted.decode_listing(listing("L1", paths=[str(inside)]))


def test_urls_need_an_allow_listed_host_and_a_fetcher() -> None:
    ref = ImageRef(url="https://evil.example/a.jpg")
    with pytest.raises(InvalidInput, match="allow-list") as info:
        ImageDecoder(CFG).decode_ref(ref, 1)
    assert info.value.field == "images[1].url"
    allowed = ImageDecodeConfig(url_allow_hosts=["cdn.example"])
    with pytest.raises(InvalidInput, match="not available"):
        ImageDecoder(allowed).decode_ref(ImageRef(url="https://cdn.example/a.png"), 0)
    png = encode(photo(7))
    fetched = ImageDecoder(allowed, fetch_url=lambda url, cap: png)
    assert fetched.decode_ref(ImageRef(url="https://cdn.example/a.png"), 0).format == "PNG"


def test_decoder_decodes_each_image_once_and_names_the_bad_one() -> None:
    dec = ImageDecoder(CFG)
    a, b = encode(photo(8)), encode(photo(9), "JPEG")
    item = listing("L1", [a, b, a])
    first = dec.decode_listing(item)
    again = dec.decode_listing(item)
    assert dec.decodes == 2  # a and b, once each, across both calls and the repeat of a
    assert [d.index for d in first] == [0, 1, 2] and [d.index for d in again] == [0, 1, 2]
    assert first[0].sha256 == first[2].sha256 != first[1].sha256
    bad = listing("L2", [a, b"not an image at all"])
    with pytest.raises(InvalidInput) as info:
        dec.decode_listing(bad)
    assert info.value.field == "images[1]"


def test_paths_follow_no_fifo_and_no_swapped_link(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening a FIFO for reading would block forever without O_NONBLOCK
    with pytest.raises(InvalidInput, match="not a regular file"):
        ImageDecoder(CFG).decode_listing(listing("L1", paths=[str(fifo)]))
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(photo(8)))
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(outside)
    rooted = ImageDecoder(ImageDecodeConfig(allow_paths=True, path_roots=[str(root)]))
    with pytest.raises(InvalidInput, match="outside"):
        rooted.decode_listing(listing("L1", paths=[str(root / "link.png")]))
