"""Safe image decoding, done once per image and shared by every image extractor.

Everything that turns listing image bytes into pixels goes through here, so the
defences live in one place:

- a byte cap (``data_b64`` is capped at validation; paths are read with a cap);
- a pixel cap checked on the header before any pixel is decoded, never above Pillow's
  own ``MAX_IMAGE_PIXELS``: a bomb raises InvalidInput, in the band where Pillow only
  warns too (no warning filter is changed: filters are process-wide);
- a format allow-list (JPEG, PNG, WebP, GIF first frame, BMP): anything else,
  including non-images, is ``unsupported_media_type``;
- truncated or corrupt files are an :class:`InvalidInput` naming the image
  (``images[2]``), which extractors turn into a per-item error;
- EXIF orientation applied, alpha flattened onto white, every mode (16-bit
  grey, CMYK, palette, LA, 1-bit) converted to 8-bit RGB.

It also holds :func:`content_box` / :func:`trim_borders`, the one place frames
(padding, letterboxing, screenshot chrome) are found, used by SSCD and PDQ alike.

Decode once: the registry runs the image extractors one after another over the
same batch, so :class:`ImageDecoder` keeps a small LRU of decoded images keyed by
the SHA-256 of the bytes. The first extractor decodes, the others hit the cache;
an image reused across listings (common in scams) is decoded once too. A key by
content, not by object identity, also survives Ray or HTTP re-serialising the
records between extractors. Failures are cached as well, so a bad image costs one
decode attempt and yields the same error from every extractor.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from signals.config import ImageDecodeConfig
from signals.errors import InvalidInput
from signals.schemas import ImageRef, Listing

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# A URL fetcher the serving layer may plug in: (url, max_bytes) -> bytes. It must
# refuse redirects to other hosts, time out, and stop reading past max_bytes.
UrlFetcher = Callable[[str, int], bytes]


@dataclass(frozen=True)
class DecodedImage:
    """One listing image, decoded: 8-bit RGB pixels plus what is known about the file."""

    index: int  # position in ``listing.images``
    rgb: np.ndarray  # (h, w, 3) uint8, C-contiguous, read-only; at most working_max_side
    width: int  # of the original, after EXIF orientation
    height: int
    format: str  # "JPEG", "PNG", ...
    sha256: str  # of the file's bytes: exact-duplicate key
    n_bytes: int
    n_frames: int = 1  # > 1 for an animated GIF/WebP (only the first frame is used)

    @property
    def field(self) -> str:
        return f"images[{self.index}]"


def decode_image_bytes(data: bytes, config: ImageDecodeConfig, index: int = 0) -> DecodedImage:
    """Decode one image's bytes under ``config``'s limits; raise InvalidInput naming it."""
    field = f"images[{index}]"
    if not data:
        raise InvalidInput(field, "image is empty")
    if len(data) > config.max_image_bytes:
        raise InvalidInput(field, f"image is over {config.max_image_bytes} bytes", "too_large")
    digest = hashlib.sha256(data).hexdigest()
    return _decode(data, digest, config, index)


def _decode(data: bytes, digest: str, config: ImageDecodeConfig, index: int) -> DecodedImage:
    field = f"images[{index}]"
    # No warnings.catch_warnings() here: warning filters are process-wide (and catch_warnings
    # is not thread-safe before Python 3.14), so Pillow's bomb warning is refused by the
    # size check below, not by turning warnings into errors.
    try:
        im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise InvalidInput(
            field, f"not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})",
            "unsupported_media_type") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # The warning, where the process's own filters make it an error.
        raise InvalidInput(field, "image has too many pixels", "too_large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(field, f"image is corrupt ({exc})") from None
    with im:
        fmt = str(im.format)
        w, h = im.size
        # The header is all that has been read: refuse a bomb before allocating it. Pillow
        # only warns between its MAX_IMAGE_PIXELS and twice that; that band is refused too.
        if w <= 0 or h <= 0:
            raise InvalidInput(field, "image has no pixels")
        limit = config.max_pixels
        if Image.MAX_IMAGE_PIXELS is not None:
            limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
        if w * h > limit:
            raise InvalidInput(field, f"image is {w}x{h} pixels, over the limit of {limit}", "too_large")
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        try:
            rgb, orientation = _to_rgb(im, config.working_max_side)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput(field, "image has too many pixels", "too_large") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Truncated files land here: Pillow reads pixels only now.
            raise InvalidInput(field, f"image is corrupt or truncated ({exc})") from None
    # Sizes reported are the original's (before draft() and downscaling), as oriented.
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return DecodedImage(index=index, rgb=rgb, width=ow, height=oh, format=fmt, sha256=digest,
                        n_bytes=len(data), n_frames=n_frames)


def _to_rgb(im: Image.Image, max_side: int) -> tuple[np.ndarray, int]:
    """8-bit RGB pixels of the first frame, oriented, flattened, at most ``max_side`` long.

    Returns the pixels and the EXIF orientation that was applied (1: none).
    """
    if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is far larger than we
        # keep: several times faster, and every model downsamples anyway. draft() keeps the
        # result at least max_side on both axes it scales, so quality is not lost.
        im.draft(im.mode, (max_side, max_side))
    im.load()
    orientation = _exif_orientation(im)
    im = _to_8bit(im)
    if orientation in _ORIENT:
        # Applied by value, not with ImageOps.exif_transpose: _to_8bit may have made a new
        # image without the EXIF block.
        im = im.transpose(_ORIENT[orientation])
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    arr.setflags(write=False)
    return arr, orientation


_T = Image.Transpose
_ORIENT: dict[int, Image.Transpose] = {
    2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
    6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90,
}


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not cost us the image; orientation is cosmetic
        return 1


def _to_8bit(im: Image.Image) -> Image.Image:
    """Modes whose plain ``convert("RGB")`` would clip or mis-scale, brought to 8 bits first."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grey: convert() would clip everything above 255 to white; keep the top byte.
        arr = np.asarray(im).astype(np.uint16) >> 8
        return Image.fromarray(arr.astype(np.uint8), "L")
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        top = int(arr.max()) if arr.size else 0
        shift = 8 if top > 255 else 0
        return Image.fromarray(np.clip(arr >> shift, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return im


class ImageDecoder:
    """Loads and decodes listing images under one config, caching results by content hash.

    One instance is shared by every image extractor of a registry (see
    :func:`signals.registry.build_registry`). Thread-safe; the cache is bounded by
    the bytes of decoded pixels it holds.
    """

    def __init__(self, config: ImageDecodeConfig, fetch_url: UrlFetcher | None = None) -> None:
        self.config = config
        self._fetch_url = fetch_url
        self._cache: OrderedDict[str, DecodedImage | InvalidInput] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()
        self.decodes = 0  # decode attempts, cache misses (tests and metrics read it)
        self.reads = 0  # image bytes loaded and hashed (tests read it)
        # The digest of each live ImageRef object already hashed: the registry's four image
        # extractors see the same ref objects, so each image is read and hashed once, not
        # four times (sha256 of a 10 MiB image is ~20 ms; a path would be read again).
        self._digests: dict[int, tuple[weakref.ref[ImageRef], str]] = {}
        self._roots = ([Path(r).resolve() for r in config.path_roots]
                       if config.path_roots is not None else None)
        self._hosts = {h.lower() for h in config.url_allow_hosts}

    def decode_listing(self, listing: Listing) -> list[DecodedImage]:
        """Every image of the listing, decoded; the first bad one raises InvalidInput."""
        return [self.decode_ref(ref, i) for i, ref in enumerate(listing.images)]

    def decode_ref(self, ref: ImageRef, index: int) -> DecodedImage:
        known = self._known_digest(ref)
        hit = None if known is None else self._cached(known)
        if hit is None:
            data = self.load_bytes(ref, index)
            self.reads += 1
            digest = hashlib.sha256(data).hexdigest()
            self._note_digest(ref, digest)
            hit = self._cached(digest)
            if hit is None:
                try:
                    hit = _decode(data, digest, self.config, 0)
                except InvalidInput as exc:
                    hit = exc
                self._remember(digest, hit)
        if isinstance(hit, InvalidInput):
            raise InvalidInput(f"images[{index}]", hit.reason, hit.code)
        return hit if hit.index == index else replace(hit, index=index)

    def _cached(self, digest: str) -> DecodedImage | InvalidInput | None:
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None:
                self._cache.move_to_end(digest)
            return hit

    def _known_digest(self, ref: ImageRef) -> str | None:
        with self._lock:
            entry = self._digests.get(id(ref))
        # An id is only trusted while the very object it was noted for is alive.
        return entry[1] if entry is not None and entry[0]() is ref else None

    def _note_digest(self, ref: ImageRef, digest: str) -> None:
        key = id(ref)

        def forget(_: object, key: int = key) -> None:
            # No lock here: a weakref callback may run during garbage collection on a
            # thread that already holds it; a single dict.pop is atomic under the GIL.
            self._digests.pop(key, None)

        with self._lock:
            self._digests[key] = (weakref.ref(ref, forget), digest)

    def load_bytes(self, ref: ImageRef, index: int) -> bytes:
        """The raw bytes of one image reference, under the byte cap and the source rules."""
        cap = self.config.max_image_bytes
        if ref.data_b64 is not None:
            data = ref.data or b""
            if not data:
                raise InvalidInput(f"images[{index}].data_b64", "image is empty")
            if len(data) > cap:
                raise InvalidInput(f"images[{index}].data_b64", f"image is over {cap} bytes",
                                   "too_large")
            return data
        if ref.path is not None:
            return self._read_path(ref.path, index)
        if ref.url is not None:
            return self._read_url(ref.url, index)
        raise InvalidInput(f"images[{index}]", "give exactly one of data_b64, path or url")

    def _read_path(self, raw: str, index: int) -> bytes:
        field = f"images[{index}].path"
        cap = self.config.max_image_bytes
        if not self.config.allow_paths:
            raise InvalidInput(field, "image paths are not accepted here; send data_b64")
        path = Path(raw)
        real = path.resolve()
        if self._roots is not None and not any(real.is_relative_to(r) for r in self._roots):
            raise InvalidInput(field, "image path is outside the allowed folders")
        try:
            # The resolved path is opened without following a link swapped in since, and
            # without blocking (a FIFO would otherwise hang the worker); only a regular
            # file is read, and never more than the cap.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise InvalidInput(field, f"no such file: {raw}", "not_found") from None
        except PermissionError:
            raise InvalidInput(field, f"cannot read {raw}: permission denied") from None
        except OSError:
            raise InvalidInput(field, "not a regular file") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidInput(field, "not a regular file")
            try:
                data = fh.read(cap + 1)
            except IsADirectoryError:
                raise InvalidInput(field, "not a regular file") from None
        if len(data) > cap:
            raise InvalidInput(field, f"image is over {cap} bytes", "too_large")
        if not data:
            raise InvalidInput(field, "image is empty")
        return data

    def _read_url(self, url: str, index: int) -> bytes:
        field = f"images[{index}].url"
        host = (urlsplit(url).hostname or "").lower()
        if host not in self._hosts:
            raise InvalidInput(field, f"host {host!r} is not on the image URL allow-list")
        if self._fetch_url is None:
            raise InvalidInput(field, "fetching image URLs is not available here; send data_b64")
        try:
            data = self._fetch_url(url, self.config.max_image_bytes)
        except InvalidInput as exc:
            # The fetcher knows why, not which image: name the field here.
            raise InvalidInput(field, exc.reason, exc.code) from None
        if len(data) > self.config.max_image_bytes:
            raise InvalidInput(field, f"image is over {self.config.max_image_bytes} bytes",
                               "too_large")
        return data

    def _remember(self, digest: str, value: DecodedImage | InvalidInput) -> None:
        limit = self.config.cache_mb * 1024 * 1024
        # A cached failure is charged a nominal 1 KiB so that failures cannot grow it unbounded.
        size = value.rgb.nbytes if isinstance(value, DecodedImage) else 1024
        with self._lock:
            self.decodes += 1
            if limit <= 0 or size > limit or digest in self._cache:
                return
            self._cache[digest] = value
            self._cache_bytes += size
            while self._cache_bytes > limit and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.rgb.nbytes if isinstance(old, DecodedImage) else 1024


# --- Border and frame trimming ----------------------------------------------------------------
#
# Copies of a photo often arrive inside a frame: white or coloured padding, letterboxing, a
# phone screenshot's status bar and margins, a caption under the photo. Copy-detection models
# see the frame as content: two *different* photos in the same frame look alike (the hardest
# negatives of benchmarks/images.py), and a framed copy looks unlike its original. Trimming
# the frame before embedding or hashing fixes both. The rules are generic, not tuned to any
# photo: a frame is a run of near-constant lines (rows, then columns) at an edge, of one
# colour; a thin detailed band (a status line, a caption) lying on a frame colour, with the
# same colour on both sides, is part of the frame too. Photos with no flat edge line are
# returned untouched after looking at their four edge lines only.


def content_box(rgb: np.ndarray, *, tolerance: int = 8, min_flat_fraction: float = 0.98,
                max_band_fraction: float = 0.12, min_keep: float = 0.4,
                work_side: int = 192) -> tuple[int, int, int, int]:
    """The box ``(x0, y0, x1, y1)`` of ``rgb`` left once uniform borders and frames are trimmed.

    - A line is *flat* when at least ``min_flat_fraction`` of its pixels are within
      ``tolerance`` (8-bit levels, any channel) of the line's median colour; the slack
      absorbs JPEG noise and a few specks, not texture or a gradient's steps.
    - From each edge, flat runs are trimmed while their colour stays within
      ``3 * tolerance`` of the run's first line; a new run of another colour (a dark bar
      above a white margin) may follow.
    - A band of non-flat lines no thicker than ``max_band_fraction`` of the extent, with
      flat lines of the same colour on both sides (text on a bar or margin), is trimmed too.
    - Rows are trimmed, then columns inside the rows kept, twice over.
    - If less than ``min_keep`` of the width or the height would remain (a mostly uniform
      photo, a small object on a plain backdrop), nothing is trimmed: a stable answer beats
      a guess, and both a copy and its original then keep their backdrop.

    Works on a strided sample at most ``work_side`` long (about 1 ms on 2 cores); the box is
    mapped back conservatively (it may keep up to one sampling step of border).
    """
    h, w = rgb.shape[:2]
    full = (0, 0, w, h)
    step = max(1, -(-max(h, w) // work_side))
    small = rgb[::step, ::step]
    sh, sw = small.shape[:2]
    if sh < 3 or sw < 3:
        return full
    edges = (small[:1], small[-1:], small[:, :1].transpose(1, 0, 2), small[:, -1:].transpose(1, 0, 2))
    if not any(_flat_lines(e, tolerance, min_flat_fraction)[0][0] for e in edges):
        return full  # the common case: a photo that reaches its edges
    y0, y1, x0, x1 = 0, sh, 0, sw
    for _ in range(2):
        a, b = _trim_axis(small[y0:y1, x0:x1], tolerance, min_flat_fraction, max_band_fraction)
        y0, y1 = y0 + a, y0 + b
        if y1 - y0 < min_keep * sh:
            return full
        a, b = _trim_axis(small[y0:y1, x0:x1].transpose(1, 0, 2), tolerance, min_flat_fraction,
                          max_band_fraction)
        x0, x1 = x0 + a, x0 + b
        if x1 - x0 < min_keep * sw:
            return full
    if (y0, y1, x0, x1) == (0, sh, 0, sw):
        return full
    # Sample i is pixel i * step: keep everything after the last trimmed sample and before
    # the next trimmed one.
    return ((x0 - 1) * step + 1 if x0 else 0, (y0 - 1) * step + 1 if y0 else 0,
            min(w, x1 * step) if x1 < sw else w, min(h, y1 * step) if y1 < sh else h)


def trim_borders(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` inside its :func:`content_box` (the same array when there is nothing to trim)."""
    x0, y0, x1, y1 = content_box(rgb)
    if (x0, y0, x1, y1) == (0, 0, rgb.shape[1], rgb.shape[0]):
        return rgb
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def _flat_lines(lines: np.ndarray, tolerance: int, min_flat_fraction: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """For ``(n, m, 3)`` lines: which are flat ``(n,)`` and their median colours ``(n, 3)``."""
    med = np.median(lines, axis=1).round().astype(np.int16)
    dev = np.abs(lines.astype(np.int16) - med[:, None, :]).max(axis=2)
    return (dev <= tolerance).mean(axis=1) >= min_flat_fraction, med


def _trim_axis(lines: np.ndarray, tolerance: int, min_flat_fraction: float,
               max_band_fraction: float) -> tuple[int, int]:
    """``[start, end)`` of the lines (axis 0) kept once frames are peeled from both ends."""
    n = lines.shape[0]
    flat, med = _flat_lines(lines, tolerance, min_flat_fraction)
    start = _peel(flat, med, 3 * tolerance, max_band_fraction * n)
    if start >= n:
        return 0, n  # all flat: nothing to tell frame from content
    end = n - _peel(flat[::-1], med[::-1], 3 * tolerance, max_band_fraction * n)
    return start, max(end, start + 1)


def _peel(flat: np.ndarray, med: np.ndarray, colour_tolerance: int, max_band: float) -> int:
    """How many lines from the start of ``flat`` belong to a frame."""
    n = len(flat)

    def same_colour(a: int, b: int) -> bool:
        return bool(np.abs(med[a] - med[b]).max() <= colour_tolerance)

    i = 0
    while i < n and flat[i]:
        j = i  # one flat run of one colour: a border, a bar, a margin
        while j < n and flat[j] and same_colour(j, i):
            j += 1
        i = j
        if i >= n or flat[i]:
            continue  # the end, or a flat run of another colour
        j = i  # a thin detailed band on the frame colour (a status line, a caption)?
        while j < n and not flat[j]:
            j += 1
        if j < n and j - i <= max_band and same_colour(j, i - 1):
            i = j
    return i
