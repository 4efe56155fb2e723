"""Uploads: every bad file gets a clear message, odd but valid images decode."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.web import uploads
from app.web.uploads import UploadError, parse_upload
from tests.unit.lens_helpers import rgb

# ----------------------------------------------------------------------------- files


def _png(arr: np.ndarray, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **save)
    return buf.getvalue()


def _url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side: int = 30_000) -> bytes:
    """A valid PNG header claiming side × side 8-bit grey pixels, with a few KB of zero rows:
    the classic decompression bomb (decoded it would be 900 MB)."""
    raw = zlib.compressobj(9)
    body = raw.compress(b"\x00" * (side + 1) * 64) + raw.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0,
                                                              0, 0))
            + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (10, 200, 30, 20)).save(buf, "JPEG")
    return buf.getvalue()


def palette_png() -> bytes:
    im = Image.new("P", (40, 30))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.putdata([(i // 40) % 3 for i in range(40 * 30)])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    im = Image.fromarray(rgb(20, 40))  # 40 wide, 20 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


BAD_UPLOADS: dict[str, tuple[Any, str, dict]] = {
    # name: (contents, expected message fragment, parse_upload kwargs)
    "not an image": (_url(b"hello, this is plain text", "text/plain"),
                     "not a recognised image", {}),
    "zero bytes": ("data:application/octet-stream;base64,", "file is empty (0 bytes)", {}),
    "truncated": (_url(_png(rgb(64, 64))[:300]), "truncated or corrupt", {}),
    "decompression bomb": (_url(bomb_png()), "decompression bomb", {}),
    "1x1": (_url(_png(rgb(1, 1))), "expected at least 16x16", {}),
    "1x5000": (_url(_png(rgb(1, 5000))), "is 5000x1 pixels; expected at least 16x16", {}),
    "over the size limit": (_url(_png(rgb(64, 64))), "the upload limit is",
                            {"max_bytes": 1000}),
    "nothing": (None, "no file was received", {}),
    "not a data url": ("hello", "not a file", {}),
    "broken base64": ("data:image/png;base64,@@@@", "invalid base64", {}),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_every_bad_upload_has_a_clear_message(case: str) -> None:
    contents, expected, kwargs = BAD_UPLOADS[case]
    with pytest.raises(UploadError) as err:
        parse_upload(contents, "up/../evil name.png", **kwargs)
    message = str(err.value)
    assert expected in message, message
    assert "evil name.png" in message and "/" not in message.split(":")[0]


def test_bomb_is_refused_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 64 * 1024
    started = time.perf_counter()
    with pytest.raises(UploadError, match=r"900,?000,?000 pixels"):
        parse_upload(_url(data), "bomb.png")
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("name,data,shape,note", [
    ("cmyk.jpg", cmyk_jpeg(), (30, 40), "CMYK converted to RGB"),
    ("palette.png", palette_png(), (30, 40), "palette image expanded to RGB"),
    ("exif.jpg", exif_rotated_jpeg(), (40, 20), "rotated upright from EXIF orientation 6"),
    ("rgba.png", _png(np.dstack([rgb(24, 32), np.full((24, 32), 128, np.uint8)])), (24, 32),
     "alpha channel dropped"),
    ("grey16.png", _png(np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40),
     (32, 48), "percentile 2-98 stretch"),
])
def test_odd_but_valid_uploads_decode(name: str, data: bytes, shape: tuple, note: str) -> None:
    up = parse_upload(_url(data), name)
    assert up.image.shape == (*shape, 3) and up.image.dtype == np.uint8
    assert any(note in n for n in up.describe()), up.describe()
    assert up.name == name and up.nbytes == len(data)


def test_sixteen_bit_tiff_decodes() -> None:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.random.default_rng(0).random((20, 24, 3)) * 60000).astype(np.uint16))
    up = parse_upload(_url(buf.getvalue(), "image/tiff"), "scene.tif")
    assert up.image.shape == (20, 24, 3)


def test_size_helpers() -> None:
    assert uploads.fmt_bytes(512) == "512 bytes" and uploads.fmt_bytes(1536) == "1.5 KB"
    payload = base64.b64encode(b"x" * 1001).decode()
    assert uploads.payload_size(payload) == 1001
    assert uploads.safe_name(None) == "upload" and uploads.safe_name("a\\b/c\x00.png") == "c.png"




# ----------------------------------------------------------------------------- issue 16


def test_upload_boxes_accept_every_format_the_decoder_reads() -> None:
    """The boxes' accept list comes from the decoder's formats: PNG, JPEG, TIFF, BMP and WebP
    pass (an image of each decodes), GIF, SVG and text do not (and say so on the server)."""
    from app.web import components

    exts, mimes = components.upload_formats()
    arr = rgb(24, 32, seed=4)
    for fmt, ext, mime in (("PNG", ".png", "image/png"), ("JPEG", ".jpg", "image/jpeg"),
                           ("TIFF", ".tif", "image/tiff"), ("BMP", ".bmp", "image/bmp"),
                           ("WEBP", ".webp", "image/webp")):
        assert ext in exts and mime in mimes
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        assert parse_upload(_url(buf.getvalue(), mime), f"x{ext}").shape == (24, 32)
    for ext in (".gif", ".svg", ".txt"):
        assert ext not in exts
    assert components.upload_formats_text() == "PNG, JPEG, TIFF, BMP or WebP"
    gif = io.BytesIO()
    Image.fromarray(arr).save(gif, "GIF")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>'
    for name, data in (("a.gif", gif.getvalue()), ("b.svg", svg), ("c.txt", b"hello")):
        with pytest.raises(UploadError, match=name.replace(".", r"\.")) as err:
            parse_upload(_url(data, "application/octet-stream"), name)
        assert "expected" in str(err.value)
    box = components.upload_box("u", "m", "drop").to_plotly_json()["props"]
    assert box["data-message-id"] == "m" and box["data-upload-id"] == "u"
    assert box["data-accept"] == ",".join(exts + mimes)
    assert box["children"].accept == box["data-accept"]


def test_multi_page_tiff_says_pages_not_bands() -> None:
    import tifffile

    pages = np.stack([rgb(20, 24, seed=s) for s in range(3)])
    buf = io.BytesIO()
    tifffile.imwrite(buf, pages, photometric="rgb")
    up = parse_upload(_url(buf.getvalue(), "image/tiff"), "three.tif")
    assert up.notes["bands"] == "used page 1 of 3"
    assert np.array_equal(up.image, pages[0])
    assert "used page 1 of 3" in up.describe()


def test_an_upload_over_the_inference_budget_is_downscaled_and_says_so(monkeypatch) -> None:
    from app import config

    monkeypatch.setattr(config, "MAX_INFER_PIXELS", 64 * 64)
    up = parse_upload(_url(_png(rgb(128, 256))), "wide.png")
    assert up.shape == (45, 90) and up.notes["downscaled_from"] == "256x128"
    assert ("downscaled from 256×128 to 90×45 px (the inference limit is 64² px, "
            "UNET_LENS_MAX_INFER_PIXELS)") in up.describe()
    exact = parse_upload(_url(_png(rgb(64, 64))), "exact.png")
    assert exact.shape == (64, 64) and not any("downscaled" in n for n in exact.describe())


def test_an_emoji_file_name_stays_readable() -> None:
    assert uploads.safe_name("🏠.png") == "🏠.png"
    assert uploads.safe_name("C:\\maps\\🛰️ scene 1.tif") == "🛰️ scene 1.tif"
    with pytest.raises(UploadError, match="^🏠.png: "):
        parse_upload(_url(b"not an image"), "🏠.png")
