"""Uploaded files (``dcc.Upload`` contents) → checked RGB arrays, or one clear message.

Every check that can fail on a user's file happens here, before any model runs, and every
failure is an :class:`UploadError` whose text is shown in the page as is:

- nothing received, not a ``data:`` URL, broken base64;
- over ``config.MAX_UPLOAD_BYTES`` (checked from the base64 length, before decoding it);
- everything :func:`app.data.imageio.decode_image` refuses: empty file, not an image,
  truncated or corrupt data, decompression bombs (checked from the header, before decoding
  pixels), images under 16 pixels on a side (1×1, 1×5000) or over ``config.MAX_IMAGE_PIXELS``.

Files that decode (CMYK, palette, EXIF-rotated, 16-bit, grayscale, RGBA) come back as
``(H, W, 3)`` uint8 with the conversions listed in :attr:`Upload.notes`. Images over
``config.MAX_INFER_PIXELS`` come back downscaled to fit it (area average; a JPEG is decoded at
a reduced scale), and the notes say so (:func:`describe_downscale`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import config
from app.data.base import DatasetError
from app.data.imageio import decode_image

#: Shown under the upload box.


class UploadError(ValueError):
    """An upload the app refuses; ``str(exc)`` is the message for the user."""


@dataclass
class Upload:
    """A decoded upload."""

    image: np.ndarray  # (H, W, 3) uint8
    name: str
    nbytes: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def describe(self) -> list[str]:
        """Human-readable notes on the conversions decode_image made."""
        return describe_notes(self.notes)


def safe_name(filename: Any) -> str:
    """The file's base name, printable, at most 80 characters (for messages)."""
    if not isinstance(filename, str) or not filename.strip():
        return "upload"
    name = re.split(r"[\\/]", filename)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "upload"
    return name if len(name) <= 80 else name[:77] + "…"


def fmt_bytes(n: int) -> str:
    """1536 → "1.5 KB" (binary units, as file managers show)."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def payload_size(b64: str) -> int:
    """Decoded size of a base64 string, without decoding it."""
    b64 = b64.strip()
    return max(0, len(b64) * 3 // 4 - b64[-2:].count("="))


def split_data_url(contents: Any, name: str) -> str:
    """The base64 payload of a ``data:<mime>;base64,<payload>`` URL."""
    if not isinstance(contents, str) or not contents:
        raise UploadError(f"{name}: no file was received; choose a file to upload.")
    head, sep, payload = contents.partition(",")
    if not sep or not head.startswith("data:"):
        raise UploadError(f"{name}: the upload is not a file (expected a data URL).")
    if ";base64" not in head:
        raise UploadError(f"{name}: the upload is not base64-encoded.")
    return payload


def parse_upload(
    contents: Any,
    filename: Any,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    fit_pixels: int | None = None,
) -> Upload:
    """Decode ``dcc.Upload`` ``contents`` into an :class:`Upload`, or raise :class:`UploadError`;
    images over ``fit_pixels`` (default ``config.MAX_INFER_PIXELS``) are downscaled to fit."""
    limit = config.MAX_UPLOAD_BYTES if max_bytes is None else int(max_bytes)
    pixels = config.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    fit = config.MAX_INFER_PIXELS if fit_pixels is None else int(fit_pixels)
    name = safe_name(filename)
    payload = split_data_url(contents, name)
    size = payload_size(payload)
    if size > limit:
        raise UploadError(
            f"{name} is {fmt_bytes(size)}; the upload limit is {fmt_bytes(limit)} "
            "(UNET_LENS_MAX_UPLOAD_BYTES). Crop or compress the image and try again.")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(f"{name}: the upload is corrupt (invalid base64 data).") from None
    try:
        image, notes = decode_image(raw, name=name, max_pixels=pixels, fit_pixels=fit)
    except DatasetError as exc:
        raise UploadError(str(exc)) from None
    except MemoryError:
        raise UploadError(f"{name}: the image is too large to decode in memory.") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not take the page down
        raise UploadError(f"{name}: could not decode the image ({type(exc).__name__}: {exc}); "
                          "expected a PNG, JPEG, TIFF, BMP or WebP image.") from None
    return Upload(image=np.ascontiguousarray(image, dtype=np.uint8), name=name, nbytes=len(raw),
                  notes=dict(notes))


def describe_notes(notes: dict[str, Any]) -> list[str]:
    """``decode_image``'s notes as short sentences ("CMYK converted to RGB", ...)."""
    out: list[str] = []
    mode = notes.get("mode")
    if mode == "CMYK":
        out.append("CMYK converted to RGB")
    elif mode in ("P", "PA"):
        out.append("palette image expanded to RGB")
    elif mode in ("L", "1", "LA", "I;16", "I;16B", "I;16L", "I", "F", "miniswhite"):
        out.append(f"grayscale ({mode}) repeated to 3 channels")
    elif mode and mode not in ("RGB", "RGBA", "RGBX"):
        out.append(f"{mode} converted to RGB")
    if notes.get("exif_rotated"):
        out.append(f"rotated upright from EXIF orientation {notes.get('exif_orientation')}")
    if notes.get("alpha"):
        out.append("alpha channel dropped")
    if notes.get("scaling"):
        out.append(str(notes["scaling"]))
    if notes.get("bands"):
        out.append(str(notes["bands"]))
    if notes.get("decoder"):
        out.append(f"decoded by {notes['decoder']}")
    if notes.get("downscaled_from"):
        out.append(describe_downscale(notes))
    return out


def _mp(pixels: int) -> str:
    """4194304 → "2048² px" (a square number), else "4.2 MP"."""
    side = int(pixels ** 0.5)
    while side * side > pixels:
        side -= 1
    return f"{side}² px" if side * side == pixels else f"{pixels / 1e6:.1f} MP"


def describe_downscale(notes: dict[str, Any]) -> str:
    """"downscaled from 8000×8000 to 2048×2048 px (the inference limit is 2048² px, ...)"."""
    src = str(notes.get("downscaled_from", "")).replace("x", "×")
    dst = str(notes.get("downscaled_to", "")).replace("x", "×")
    return (f"downscaled from {src} to {dst} px (the inference limit is "
            f"{_mp(config.MAX_INFER_PIXELS)}, UNET_LENS_MAX_INFER_PIXELS)")


__all__ = [
    "Upload", "UploadError", "describe_downscale", "describe_notes",
    "fmt_bytes",
    "parse_upload", "payload_size", "safe_name", "split_data_url",
]
