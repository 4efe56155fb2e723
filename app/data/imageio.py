"""Decode untrusted image files into what the rest of the app expects.

Every loader and the upload handler go through :func:`decode_image` / :func:`decode_mask`, so the
format quirks (16-bit, palette, CMYK, EXIF orientation, multi-band TIFF) and the safety checks
(empty, truncated, decompression bombs, absurd sizes) live in one place. Every failure is a
:class:`~app.data.base.DatasetError` whose message names the file and says what was expected.

Decisions:

* Formats: PNG, JPEG, TIFF, BMP and WebP. Other Pillow plugins are refused on purpose (e.g. EPS
  would shell out to Ghostscript). TIFF goes through ``tifffile`` (multi-band, 16-bit, float);
  TIFFs whose compression ``tifffile`` cannot decode without ``imagecodecs`` (LZW, JPEG...) fall
  back to Pillow, recorded as ``notes["decoder"] = "pillow"``.
* Sizes: both sides must be at least :data:`MIN_SIDE` (16) pixels and ``width * height`` at most
  ``max_pixels``. Both are checked from the header, before any pixel is decoded.
* Alpha is dropped, not composited: in aerial imagery alpha is a no-data mask, and the colour under
  it is kept as stored (usually black already).
* Anything that is not 8-bit (16-bit, 32-bit, float) is scaled to 8 bits by a 2-98 percentile
  stretch computed jointly over the colour bands (keeps their balance); NaN/inf become 0 and a
  constant image becomes all 0. Exception: Pillow itself reduces 16-bit *colour* PNGs to 8 bits
  (high byte) while reading; that is recorded in ``notes["scaling"]`` rather than silently hidden.
* More than 3 bands: bands 1-3 are used as RGB (recorded in ``notes["bands"]``).
* Downscaling (``fit_pixels``): an image whose header claims more pixels is decoded and then
  area-averaged (BOX) to the largest size of the same aspect ratio within the budget
  (:func:`fit_size`); a JPEG is decoded at 1/2, 1/4 or 1/8 scale first (``Image.draft``), so
  its full-size pixels never exist. Recorded as ``notes["downscaled_from"]`` / ``["downscaled_to"]``.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from app import config
from app.data.base import DatasetError

#: Smallest accepted side in pixels: smaller images cannot hold a building at aerial GSDs and
#: break the U-Net's downsampling path.
MIN_SIDE = 16

#: Pillow plugins we accept (see module docstring).
PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")

#: A TIFF may hold several bands per pixel; cap the decoded values so a 2-D-small but band-huge
#: file cannot exhaust memory.
MAX_BANDS = 16

_EXPECTED = "expected a PNG, JPEG, TIFF, BMP or WebP image"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)

# Pillow's own decompression-bomb guard, process-wide: it warns above this many pixels and raises
# above twice as many. We turn its warning into an error inside the decoders below and check the
# caller's ``max_pixels`` ourselves, so a per-call limit can tighten (not loosen past 2x) this one.
Image.MAX_IMAGE_PIXELS = config.MAX_IMAGE_PIXELS

ImageSource = bytes | bytearray | Path | str


def decode_image(
    data: ImageSource,
    *,
    name: str,
    max_pixels: int = config.MAX_IMAGE_PIXELS,
    fit_pixels: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an image file (bytes or path) to ``(H, W, 3)`` uint8 RGB.

    Returns ``(rgb, notes)`` where ``notes`` holds flat scalars describing any conversion
    (``mode``, ``scaling``, ``exif_rotated``, ``alpha``, ``bands``, ``decoder``,
    ``downscaled_from`` / ``downscaled_to``), ready to be merged into ``Scene.meta``. Images
    over ``max_pixels`` are refused from their header; images over ``fit_pixels`` (when given)
    are downscaled to fit it (see the module docstring). Raises :class:`DatasetError` naming
    ``name`` for any bad input.
    """
    check = _size_checker(name, max_pixels, min_side=MIN_SIDE)
    src, head = _source(data, name)
    if head.startswith(_TIFF_MAGIC):
        raw = _read_tiff(src, name, check, max_pixels)
        if raw is not None:
            rgb, notes = _tiff_to_rgb(raw, name)
            if fit_pixels is not None and rgb.shape[0] * rgb.shape[1] > fit_pixels:
                h, w = rgb.shape[:2]
                tw, th = fit_size(w, h, fit_pixels)
                notes["downscaled_from"] = f"{w}x{h}"
                rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.BOX))
            return _downscaled_to(rgb, notes), notes
        src, _ = _source(data, name)
        notes: dict[str, Any] = {"decoder": "pillow"}
    else:
        notes = {}
    with _open_pil(src, name, check, notes, fit_pixels=fit_pixels, max_pixels=max_pixels) as im:
        rgb, notes = _pil_to_rgb(_fit_pil(im, fit_pixels, notes), name, notes)
        return _downscaled_to(rgb, notes), notes


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest ``(width, height)`` of the same aspect ratio with at most ``max_pixels``
    pixels (the size itself when it fits); the short side never drops under :data:`MIN_SIDE`
    (or the image's own short side, when smaller)."""
    if max_pixels < 1:
        raise ValueError(f"The 'max_pixels' parameter must be >= 1. Got {max_pixels!r} instead.")
    if width * height <= max_pixels:
        return int(width), int(height)
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    floor = min(MIN_SIDE, width, height)
    if w < floor:
        w, h = floor, max(1, min(height, max_pixels // floor))
    elif h < floor:
        h, w = floor, max(1, min(width, max_pixels // floor))
    while w * h > max_pixels:  # rounding: at most a step or two
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def _fit_pil(im: Image.Image, fit_pixels: int | None, notes: dict[str, Any]) -> Image.Image:
    """``im`` turned upright (EXIF) and area-averaged down to ``fit_pixels``; palette and 1-bit
    images are expanded first, so their colours, not their indices, are averaged."""
    header = notes.pop("header_size", None)
    if fit_pixels is None:
        return im
    full_w, full_h = header or im.size
    if full_w * full_h <= fit_pixels:
        return im
    notes["downscaled_from"] = f"{full_w}x{full_h}"
    im = _exif_transpose(im, notes)  # a no-op when _pil_to_rgb does it again
    if notes.get("exif_orientation") in (5, 6, 7, 8):
        full_w, full_h = full_h, full_w
    target = fit_size(full_w, full_h, fit_pixels)
    if im.size == target:  # a JPEG draft already landed on the exact size
        return im
    mode = im.mode
    if mode in ("P", "PA"):
        notes.setdefault("mode", mode)
        has_alpha = mode == "PA" or "transparency" in im.info
        if has_alpha:
            notes["alpha"] = "dropped"
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        notes.setdefault("mode", mode)
        im = im.convert("L")
    return im.resize(target, Image.Resampling.BOX)


def _downscaled_to(rgb: np.ndarray, notes: dict[str, Any]) -> np.ndarray:
    """Record the final size of a downscaled image (after any EXIF rotation)."""
    if "downscaled_from" in notes:
        notes["downscaled_to"] = f"{rgb.shape[1]}x{rgb.shape[0]}"
    return rgb


def decode_mask(
    data: ImageSource,
    *,
    name: str,
    expected_shape: tuple[int, int],
    max_pixels: int = config.MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode a building mask to ``(H, W)`` uint8 in {0, 1}.

    Accepts 0/255 or 0/1 masks, grayscale, palette (index > 0 is building) or multi-band (any
    colour band > 0 is building; alpha is ignored). ``expected_shape`` is the image's ``(H, W)``;
    a mask of another size is rejected from its header, before decoding.
    """
    if len(expected_shape) != 2:
        raise ValueError(
            f"The 'expected_shape' parameter must be (height, width). Got {expected_shape!r} instead."
        )
    check = _size_checker(name, max_pixels, min_side=1, expected_hw=tuple(expected_shape))
    src, head = _source(data, name)
    if head.startswith(_TIFF_MAGIC):
        raw = _read_tiff(src, name, check, max_pixels)
        if raw is not None:
            return _tiff_to_mask(raw)
        src, _ = _source(data, name)
    with _open_pil(src, name, check, {}, max_pixels=max_pixels) as im:
        return _pil_to_mask(im)


# --------------------------------------------------------------------------------------- checks


def _source(data: ImageSource, name: str) -> tuple[io.BytesIO | Path, bytes]:
    """Normalise the input to something seekable and return its first bytes for sniffing."""
    if isinstance(data, (bytes, bytearray)):
        if len(data) == 0:
            raise DatasetError(f"{name}: file is empty (0 bytes); {_EXPECTED}.")
        return io.BytesIO(bytes(data)), bytes(data[:8])
    path = Path(data)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise DatasetError(f"{name}: file not found; {_EXPECTED}.") from None
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read file ({exc}); {_EXPECTED}.") from exc
    if size == 0:
        raise DatasetError(f"{name}: file is empty (0 bytes); {_EXPECTED}.")
    return path, head


def _size_checker(
    name: str, max_pixels: int, *, min_side: int, expected_hw: tuple[int, int] | None = None
) -> Callable[[int, int], None]:
    """Build the header-size check shared by the Pillow and tifffile paths."""

    def check(width: int, height: int) -> None:
        if width * height > max_pixels:
            raise DatasetError(
                f"{name}: image header claims {width}x{height} = {width * height:,} pixels, over "
                f"the limit of {max_pixels:,} pixels (decompression-bomb guard; raise "
                f"UNET_LENS_MAX_IMAGE_PIXELS to allow larger images)."
            )
        if width < min_side or height < min_side:
            raise DatasetError(
                f"{name}: image is {width}x{height} pixels; expected at least "
                f"{min_side}x{min_side}."
            )
        if expected_hw is not None and (height, width) != expected_hw:
            raise DatasetError(
                f"{name}: mask is {width}x{height} pixels but its image is "
                f"{expected_hw[1]}x{expected_hw[0]}; expected the same size."
            )

    return check


# --------------------------------------------------------------------------------------- Pillow


def _bomb_message(name: str, exc: Exception, max_pixels: int) -> str:
    """Pillow's bomb guard in our words, quoting the limit that applies (Pillow's error quotes
    twice its own threshold, which is not the limit anyone configured)."""
    limit = min(int(max_pixels), int(Image.MAX_IMAGE_PIXELS or max_pixels))
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels than allowed"
    return (f"{name}: image header claims {size}, over the limit of {limit:,} pixels: a "
            "possible decompression bomb, refused before decoding (raise "
            "UNET_LENS_MAX_IMAGE_PIXELS to allow larger images).")


@contextmanager
def _open_pil(
    src: io.BytesIO | Path, name: str, check: Callable[[int, int], None], notes: dict[str, Any],
    *, fit_pixels: int | None = None, max_pixels: int = config.MAX_IMAGE_PIXELS,
) -> Iterator[Image.Image]:
    """Open lazily, check the header size, then decode; Pillow errors become DatasetError.

    With ``fit_pixels``, a JPEG over that budget is decoded at a reduced DCT scale
    (``Image.draft``); its header size is left in ``notes["header_size"]`` for :func:`_fit_pil`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(src, formats=PIL_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DatasetError(_bomb_message(name, exc, max_pixels)) from None
        except UnidentifiedImageError:
            raise DatasetError(f"{name}: not a recognised image; {_EXPECTED}.") from None
        except _DECODE_ERRORS as exc:
            raise DatasetError(f"{name}: corrupt image header ({exc}); {_EXPECTED}.") from exc
        with im:
            check(*im.size)
            if any(";16" in str(tile.args) for tile in im.tile) and im.mode in ("RGB", "RGBA"):
                notes["scaling"] = "16-bit colour reduced to 8-bit by Pillow (high byte)"
            if fit_pixels is not None and im.size[0] * im.size[1] > fit_pixels:
                notes["header_size"] = im.size
                if im.format == "JPEG":
                    im.draft(None, fit_size(*im.size, fit_pixels))
            try:
                im.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise DatasetError(_bomb_message(name, exc, max_pixels)) from None
            except _DECODE_ERRORS as exc:
                raise DatasetError(
                    f"{name}: could not decode the {im.format} pixel data, the file is truncated "
                    f"or corrupt ({exc})."
                ) from exc
            yield im


def _exif_transpose(im: Image.Image, notes: dict[str, Any]) -> Image.Image:
    """Apply the EXIF orientation so pixels are upright (phone/drone JPEGs rely on it)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a good image unreadable
        notes["exif"] = "unreadable, ignored"
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        notes["exif_rotated"] = True
        notes["exif_orientation"] = int(orientation)
        return ImageOps.exif_transpose(im)
    return im


def _pil_to_rgb(
    im: Image.Image, name: str, notes: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    im = _exif_transpose(im, notes)
    mode = im.mode
    if mode != "RGB":
        notes.setdefault("mode", mode)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        return _gray_to_rgb(_stretch(arr[..., None], notes)[..., 0]), notes
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8)), notes
    if mode in ("L", "1"):
        return _gray_to_rgb(np.asarray(im.convert("L"))), notes
    if mode in ("LA", "La"):
        notes["alpha"] = "dropped"
        return _gray_to_rgb(np.asarray(im.getchannel("L"))), notes
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        if has_alpha:
            notes["alpha"] = "dropped"
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))[..., :3].copy(), notes
    if mode in ("RGBA", "RGBa", "RGBX"):
        if mode != "RGBX":
            notes["alpha"] = "dropped"
        return np.asarray(im)[..., :3].copy(), notes
    try:  # CMYK, YCbCr, LAB, HSV...: let Pillow do the colour conversion
        return np.asarray(im.convert("RGB")).copy(), notes
    except ValueError as exc:
        raise DatasetError(
            f"{name}: unsupported image mode {mode!r} ({exc}); expected RGB, grayscale, "
            f"palette, CMYK or 16-bit."
        ) from exc


def _pil_to_mask(im: Image.Image) -> np.ndarray:
    im = _exif_transpose(im, {})
    mode = im.mode
    if mode in ("P", "PA"):
        arr = np.asarray(im.getchannel(0) if mode == "PA" else im)  # palette index, not colour
    elif mode in ("LA", "La", "RGBA", "RGBa", "RGBX"):
        arr = np.asarray(im)[..., :-1]  # alpha is not a label
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(im.convert("RGB"))
    else:
        arr = np.asarray(im)
    return _binarise(arr)


def _binarise(arr: np.ndarray) -> np.ndarray:
    """Any non-zero band means building (0/1, 0/255 and coloured masks alike)."""
    arr = np.nan_to_num(arr) if arr.dtype.kind == "f" else arr
    if arr.ndim == 3:
        return np.ascontiguousarray((arr > 0).any(axis=2), dtype=np.uint8)
    return np.ascontiguousarray(arr > 0, dtype=np.uint8)


# -------------------------------------------------------------------------------------- tifffile


class _RawTiff:
    """First image of a TIFF as ``(H, W, bands)`` in its stored dtype, plus how to read it."""

    def __init__(
        self,
        arr: np.ndarray,
        photometric: int,
        colormap: np.ndarray | None,
        has_alpha: bool,
        bits: int,
        pages: int = 1,
    ) -> None:
        self.arr = arr
        self.pages = pages  # images in the series (pages, planes...): bands are pages × samples
        self.bits = bits
        self.photometric = photometric
        self.colormap = colormap
        self.has_alpha = has_alpha


def _read_tiff(
    src: io.BytesIO | Path, name: str, check: Callable[[int, int], None], max_pixels: int
) -> _RawTiff | None:
    """Read the first series with tifffile; ``None`` means "let Pillow try" (missing codec).

    A corrupt TIFF can make tifffile raise almost anything while walking its tags (a broken
    IFD chain, odd tag types): every such failure becomes a ``DatasetError`` naming the file.
    """
    try:
        return _read_tiff_unchecked(src, name, check, max_pixels)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt structures raise many types
        raise DatasetError(f"{name}: not a readable TIFF ({exc}); {_EXPECTED}.") from None


def _read_tiff_unchecked(
    src: io.BytesIO | Path, name: str, check: Callable[[int, int], None], max_pixels: int
) -> _RawTiff | None:
    P = tifffile.PHOTOMETRIC
    try:
        tif = tifffile.TiffFile(src)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on garbage
        raise DatasetError(f"{name}: not a readable TIFF ({exc}); {_EXPECTED}.") from None
    with tif:
        if not tif.series:
            raise DatasetError(f"{name}: TIFF holds no image; {_EXPECTED}.")
        series = tif.series[0]
        key = series.keyframe
        axes = series.axes
        if "Y" not in axes or "X" not in axes:
            raise DatasetError(f"{name}: TIFF layout {axes!r} has no Y/X image axes.")
        height, width = int(key.imagelength), int(key.imagewidth)
        check(width, height)
        if int(series.size) > max_pixels * MAX_BANDS:
            raise DatasetError(
                f"{name}: TIFF holds {int(series.size):,} values ({series.shape}); expected at "
                f"most {MAX_BANDS} bands of {max_pixels:,} pixels."
            )
        if (
            key.compression not in tifffile.TIFF.DECOMPRESSORS
            or key.predictor not in tifffile.TIFF.UNPREDICTORS
            or key.photometric == P.YCBCR
        ):
            return None
        file_size = int(tif.filehandle.size)
        for page in series.pages:
            if page is None:
                continue
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
            if ends and max(ends) > file_size:
                raise DatasetError(
                    f"{name}: TIFF is truncated (pixel data ends at byte {max(ends):,} of a "
                    f"{file_size:,}-byte file)."
                )
        try:
            arr = series.asarray()
        except ValueError as exc:
            if "imagecodecs" in str(exc):
                return None
            raise DatasetError(
                f"{name}: could not decode TIFF pixel data, the file is "
                f"truncated or corrupt ({exc})."
            ) from exc
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(
                f"{name}: could not decode TIFF pixel data, the file is "
                f"truncated or corrupt ({exc})."
            ) from exc
        pages = int(np.prod([n for ax, n in zip(axes, arr.shape, strict=False)
                             if ax not in "YXS"], dtype=np.int64))
        yi, xi = axes.index("Y"), axes.index("X")
        arr = np.moveaxis(arr, (yi, xi), (0, 1)).reshape(height, width, -1)
        if arr.shape[2] == 0:
            raise DatasetError(f"{name}: TIFF has no samples per pixel; {_EXPECTED}.")
        tag = key.tags.get(274)
        arr = _orient(arr, int(tag.value) if tag is not None else 1)
        colormap = None if key.colormap is None else np.asarray(key.colormap)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        bits = int(np.max(key.bitspersample))
        return _RawTiff(arr, int(key.photometric), colormap, bool(key.extrasamples), bits,
                        pages=max(1, pages))


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """TIFF orientation tag (same codes as EXIF) applied to an (H, W, B) array."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _tiff_to_rgb(raw: _RawTiff, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    rgb, notes = _page_to_rgb(raw, name)
    if raw.pages > 1:  # a multi-page TIFF: its first page is the image, said in pages
        inner = notes.get("bands")
        notes["bands"] = f"used page 1 of {raw.pages}" + (f" ({inner})" if inner else "")
    return rgb, notes


def _page_to_rgb(raw: _RawTiff, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    P = tifffile.PHOTOMETRIC
    arr = raw.arr
    if raw.pages > 1 and arr.shape[2] % raw.pages == 0:
        arr = arr[..., : arr.shape[2] // raw.pages]  # the first page's samples
    bands = arr.shape[2]
    notes: dict[str, Any] = {}
    if arr.dtype.kind == "c":
        raise DatasetError(f"{name}: complex-valued TIFF; expected real image data.")
    if raw.photometric == P.PALETTE and raw.colormap is not None:
        notes["mode"] = "P"
        cmap = raw.colormap
        cmap = (cmap >> 8) if cmap.max() > 255 else cmap
        return np.ascontiguousarray(cmap[:, arr[..., 0]].transpose(1, 2, 0).astype(np.uint8)), notes
    if raw.photometric == P.SEPARATED and bands >= 4:
        notes["mode"] = "CMYK"
        if arr.dtype != np.uint8:
            arr = _stretch(arr[..., :4], notes)
        cmy, k = arr[..., :3].astype(np.uint16), arr[..., 3:4].astype(np.uint16)
        return ((255 - cmy) * (255 - k) // 255).astype(np.uint8), notes
    if raw.photometric == P.MINISWHITE:
        notes["mode"] = "miniswhite"
        arr = _invert(arr, raw.bits)
    if raw.bits == 1:
        notes["mode"] = "1"
        arr = (arr > 0).astype(np.uint8) * 255
    if bands in (2, 4) and raw.has_alpha:
        notes["alpha"] = "dropped"
        arr = arr[..., :-1]
    elif bands > 3:
        notes["bands"] = f"used bands 1-3 of {bands}"
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = _stretch(arr, notes)
    if arr.shape[2] == 1:
        notes.setdefault("mode", "L")
        return _gray_to_rgb(arr[..., 0]), notes
    if arr.shape[2] == 2:
        notes["bands"] = "used band 1 of 2"
        return _gray_to_rgb(arr[..., 0]), notes
    return np.ascontiguousarray(arr), notes


def _tiff_to_mask(raw: _RawTiff) -> np.ndarray:
    P = tifffile.PHOTOMETRIC
    arr = raw.arr
    if raw.photometric == P.PALETTE:
        return _binarise(arr[..., 0])
    if raw.photometric == P.MINISWHITE:
        arr = _invert(arr, raw.bits)
    if raw.has_alpha and arr.shape[2] > 1:
        arr = arr[..., :-1]
    return _binarise(arr)


def _invert(arr: np.ndarray, bits: int) -> np.ndarray:
    """MINISWHITE TIFFs store 0 as white; flip so larger means brighter like everything else."""
    if arr.dtype.kind in "ui":
        top = min(2**bits - 1, int(np.iinfo(arr.dtype).max))
        return (top - arr.astype(np.int64)).clip(0, None).astype(arr.dtype)
    return -arr


# ------------------------------------------------------------------------------------- scaling


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2), dtype=np.uint8)


def _stretch(arr: np.ndarray, notes: dict[str, Any]) -> np.ndarray:
    """2-98 percentile stretch of an (H, W, B) array to uint8, joint over bands.

    Percentiles come from a strided sample (at most ~1M values) and the mapping is done in row
    chunks, so an 8k x 8k 16-bit image never needs a full float copy in memory.
    """
    source = str(arr.dtype)
    if arr.dtype == np.bool_:
        notes["scaling"] = "bool to 0/255"
        return arr.astype(np.uint8) * 255
    step = max(1, int(np.sqrt(arr.shape[0] * arr.shape[1] / 1_000_000)))
    sample = arr[::step, ::step].astype(np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        notes["scaling"] = f"no finite values in {source}, set to 0"
        return np.zeros(arr.shape, np.uint8)
    lo, hi = (float(v) for v in np.percentile(sample, (2, 98)))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        notes["scaling"] = f"constant {source} image, set to 0"
        return np.zeros(arr.shape, np.uint8)
    notes["scaling"] = f"percentile 2-98 stretch from {source}"
    notes["stretch_low"] = lo
    notes["stretch_high"] = hi
    out = np.empty(arr.shape, np.uint8)
    scale = 255.0 / (hi - lo)
    rows = max(1, 4_000_000 // max(1, arr.shape[1] * arr.shape[2]))
    for start in range(0, arr.shape[0], rows):
        chunk = arr[start : start + rows].astype(np.float32)
        chunk = (chunk - np.float32(lo)) * np.float32(scale)
        np.nan_to_num(chunk, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(chunk, 0, 255, out=chunk)
        out[start : start + rows] = np.rint(chunk)
    return out
