"""decode_image / decode_mask on every format quirk and every bad input (files made here)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from app.data.base import DatasetError
from app.data.imageio import MIN_SIDE, decode_image, decode_mask, fit_size

RNG = np.random.default_rng(0)


def encode(im: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def png_raw(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG built by hand, so the header can claim any size (bombs) or bit depth."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def tiff_header_only(width: int, height: int) -> bytes:
    """A tiny little-endian TIFF whose tags claim ``width x height`` 8-bit gray pixels."""
    tags = [
        (256, 4, 1, width),  # ImageWidth (LONG)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),  # StripOffsets: right after the IFD
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64


# ------------------------------------------------------------------------------------ good input


def test_rgb_png_round_trips_exactly_from_bytes_and_path(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = encode(rgb)
    out, notes = decode_image(data, name="a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 30, 3)
    np.testing.assert_array_equal(out, rgb)
    assert notes == {}
    path = tmp_path / "a.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(path, name=str(path))[0], rgb)


def test_jpeg_decodes_to_rgb() -> None:
    rgb = np.full((32, 48, 3), (200, 30, 60), np.uint8)
    out, _ = decode_image(encode(rgb, "JPEG", quality=95), name="a.jpg")
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - rgb).max() < 8


def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = RNG.integers(0, 256, (20, 25), dtype=np.uint8)
    out, notes = decode_image(encode(gray), name="g.png")
    assert out.shape == (20, 25, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    assert notes["mode"] == "L"


def test_rgba_alpha_is_dropped_not_composited() -> None:
    rgba = RNG.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: compositing would give black, dropping keeps colour
    out, notes = decode_image(encode(rgba), name="a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])
    assert notes["alpha"] == "dropped"
    assert notes["mode"] == "RGBA"


def test_palette_png_is_expanded_to_its_colours() -> None:
    im = Image.new("P", (20, 20))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    idx = np.zeros((20, 20), np.uint8)
    idx[:10] = 1
    idx[10:, :5] = 2
    im.putdata(idx.ravel().tolist())
    out, notes = decode_image(encode(im), name="p.png")
    assert notes["mode"] == "P"
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[15, 0]) == (0, 0, 255)
    assert tuple(out[15, 15]) == (0, 0, 0)


def test_palette_png_with_transparency_drops_alpha() -> None:
    im = Image.new("P", (20, 20), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    im.info["transparency"] = 0
    out, notes = decode_image(encode(im, transparency=0), name="pt.png")
    assert tuple(out[0, 0]) == (10, 200, 30)
    assert notes["alpha"] == "dropped"


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (255, 0, 0)
    rgb[:, 16:] = (0, 0, 255)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    out, notes = decode_image(encode(cmyk, "JPEG", quality=95), name="c.jpg")
    assert notes["mode"] == "CMYK"
    assert out.shape == (32, 32, 3)
    assert out[:, :8, 0].mean() > 200 and out[:, :8, 2].mean() < 60
    assert out[:, 24:, 2].mean() > 200 and out[:, 24:, 0].mean() < 60


def test_exif_orientation_is_applied() -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:10, :10] = (255, 255, 255)  # bright block top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out, notes = decode_image(data, name="rot.jpg")
    assert out.shape == (40, 20, 3)  # now 20 wide, 40 high
    assert notes["exif_rotated"] is True and notes["exif_orientation"] == 6
    assert out[:10, -10:].mean() > 200  # top-left went to top-right
    assert out[:10, :10].mean() < 50


def test_16bit_grayscale_png_is_percentile_stretched() -> None:
    gray = np.linspace(1000, 50000, 64 * 64).reshape(64, 64).astype(np.uint16)
    out, notes = decode_image(encode(gray), name="g16.png")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert "percentile 2-98" in notes["scaling"] and "uint16" in notes["scaling"]
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)  # monotonic mapping


def test_16bit_grayscale_tiff_is_percentile_stretched() -> None:
    gray = np.linspace(0, 4095, 50 * 40).reshape(50, 40).astype(np.uint16)
    out, notes = decode_image(tiff_bytes(gray), name="g16.tif")
    assert out.shape == (50, 40, 3)
    assert notes["scaling"] == "percentile 2-98 stretch from uint16"
    assert out.min() == 0 and out.max() == 255


def test_16bit_colour_png_is_reduced_by_pillow_and_says_so() -> None:
    arr = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 60).astype(">u2")
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(32))
    out, notes = decode_image(png_raw(32, 32, 16, 2, raw), name="rgb16.png")
    assert out.shape == (32, 32, 3)
    assert "Pillow" in notes["scaling"]


def test_multiband_tiff_uses_first_three_bands() -> None:
    bands = RNG.integers(0, 3000, (5, 40, 30)).astype(np.uint16)
    data = tiff_bytes(bands, photometric="minisblack", planarconfig="separate")
    out, notes = decode_image(data, name="mb.tif")
    assert out.shape == (40, 30, 3)
    assert notes["bands"] == "used bands 1-3 of 5"
    # band order kept: the brightest pixel of band 1 is bright in channel 0
    r, c = np.unravel_index(np.argmax(bands[0]), bands[0].shape)
    assert out[r, c, 0] == 255


def test_rgb_uint8_tiff_round_trips() -> None:
    rgb = RNG.integers(0, 256, (24, 36, 3), dtype=np.uint8)
    out, notes = decode_image(tiff_bytes(rgb, photometric="rgb"), name="rgb.tif")
    np.testing.assert_array_equal(out, rgb)
    assert notes == {}


def test_float_tiff_with_nan_is_stretched_and_finite() -> None:
    arr = RNG.random((32, 32)).astype(np.float32)
    arr[0, 0] = np.nan
    out, notes = decode_image(tiff_bytes(arr), name="f.tif")
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0
    assert "float32" in notes["scaling"]


def test_tiff_orientation_tag_is_applied() -> None:
    arr = np.zeros((20, 40), np.uint8)
    arr[:10, :10] = 255
    data = tiff_bytes(arr, extratags=[(274, "H", 1, 6, True)])
    out, _ = decode_image(data, name="o.tif")
    assert out.shape == (40, 20, 3)
    assert out[:10, -10:].min() == 255


def test_lzw_tiff_falls_back_to_pillow() -> None:
    rgb = RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    out, notes = decode_image(encode(rgb, "TIFF", compression="tiff_lzw"), name="lzw.tif")
    np.testing.assert_array_equal(out, rgb)
    assert notes["decoder"] == "pillow"


# ------------------------------------------------------------------------------------- bad input


def test_zero_bytes_is_refused_with_the_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"empty\.png.*empty \(0 bytes\)"):
        decode_image(b"", name="empty.png")
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.jpg"):
        decode_image(path, name=str(path))


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nothere.png: file not found"):
        decode_image(tmp_path / "nothere.png", name="nothere.png")


def test_not_an_image_is_refused_with_the_name() -> None:
    with pytest.raises(
        DatasetError, match=r"notes\.txt: not a recognised image.*PNG, JPEG, TIFF, BMP or WebP"
    ):
        decode_image(b"this is plain text, not pixels" * 10, name="notes.txt")


def test_other_pillow_formats_are_refused() -> None:
    gif = encode(np.zeros((20, 20), np.uint8), "GIF")
    with pytest.raises(DatasetError, match="anim.gif: not a recognised image"):
        decode_image(gif, name="anim.gif")


def test_truncated_png_is_refused_with_the_name() -> None:
    data = encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"cut\.png: .*truncated"):
        decode_image(data[: len(data) // 2], name="cut.png")


def test_truncated_jpeg_is_refused_with_the_name() -> None:
    data = encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(DatasetError, match=r"cut\.jpg: .*truncated"):
        decode_image(data[: len(data) // 2], name="cut.jpg")


def test_truncated_tiff_is_refused_with_the_name() -> None:
    data = tiff_bytes(RNG.integers(0, 4000, (64, 64)).astype(np.uint16))
    with pytest.raises(DatasetError, match=r"cut\.tif: .*truncated"):
        decode_image(data[: len(data) // 2], name="cut.tif")


def test_decompression_bomb_png_is_refused_before_decoding() -> None:
    # Header claims 30000 x 30000 (900M pixels); the file itself is a few KB.
    raw = zlib.compress(b"\x00" * 30001 * 4)
    data = png_raw(30000, 30000, 8, 0, raw)
    assert len(data) < 10_000
    with pytest.raises(DatasetError, match=r"bomb\.png: .*(decompression|pixels)"):
        decode_image(data, name="bomb.png")


def test_pillow_bomb_warning_range_is_an_error_too() -> None:
    # Between Pillow's warning (1x) and error (2x) thresholds: must not just warn.
    side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    data = png_raw(side, side, 8, 0, b"\x00" * (side + 1))
    with pytest.raises(DatasetError, match=r"warnbomb\.png: .*pixels"):
        decode_image(data, name="warnbomb.png")


def test_over_max_pixels_is_refused_from_the_header() -> None:
    data = encode(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"big\.png: .*100x100 = 10,000 pixels.*limit of 5,000"):
        decode_image(data, name="big.png", max_pixels=5000)


def test_tiff_bomb_is_refused_from_its_tags() -> None:
    data = tiff_header_only(30000, 30000)
    assert len(data) < 1000
    with pytest.raises(DatasetError, match=r"bomb\.tif: .*30000x30000"):
        decode_image(data, name="bomb.tif")


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 5000), (5000, 1), (15, 16)])
def test_too_small_is_refused(width: int, height: int) -> None:
    data = encode(np.zeros((height, width), np.uint8))
    with pytest.raises(
        DatasetError, match=rf"tiny\.png: image is {width}x{height} .*at least 16x16"
    ):
        decode_image(data, name="tiny.png")


def test_minimum_size_is_accepted() -> None:
    out, _ = decode_image(encode(np.zeros((MIN_SIDE, MIN_SIDE), np.uint8)), name="ok.png")
    assert out.shape == (MIN_SIDE, MIN_SIDE, 3)


# ------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("on", [1, 255])
def test_mask_accepts_0_1_and_0_255(on: int) -> None:
    mask = (RNG.random((20, 30)) > 0.5).astype(np.uint8)
    out = decode_mask(encode(mask * on), name="m.png", expected_shape=(20, 30))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)


def test_multiband_mask_is_any_band_nonzero() -> None:
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:5, :, 0] = 255  # red buildings (Massachusetts style)
    rgb[10:, :, 2] = 1
    out = decode_mask(encode(rgb), name="m.png", expected_shape=(20, 20))
    assert out[:5].all() and out[10:].all() and not out[5:10].any()


def test_rgba_mask_ignores_alpha() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:4, :, 1] = 255
    out = decode_mask(encode(rgba), name="m.png", expected_shape=(20, 20))
    assert out.sum() == 4 * 20


def test_palette_mask_uses_indices_not_colours() -> None:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 6))  # background is white
    im.paste(1, (0, 0, 20, 3))
    out = decode_mask(encode(im), name="p.png", expected_shape=(20, 20))
    assert out.sum() == 3 * 20


def test_tiff_masks_single_and_multiband() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6] = 255
    np.testing.assert_array_equal(
        decode_mask(tiff_bytes(mask), name="m.tif", expected_shape=(20, 20)), mask // 255
    )
    stack = np.stack([np.zeros_like(mask), mask, np.zeros_like(mask)])
    data = tiff_bytes(stack, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(
        decode_mask(data, name="m3.tif", expected_shape=(20, 20)), mask // 255
    )


def test_mask_of_other_size_is_refused_with_the_name(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    path.write_bytes(encode(np.zeros((20, 30), np.uint8)))
    with pytest.raises(DatasetError, match=r"mask\.png: mask is 30x20 .*image is 40x10"):
        decode_mask(path, name=str(path), expected_shape=(10, 40))


def test_mask_errors_name_the_file() -> None:
    with pytest.raises(DatasetError, match="m0.png: file is empty"):
        decode_mask(b"", name="m0.png", expected_shape=(20, 20))
    with pytest.raises(DatasetError, match="mtxt.png: not a recognised image"):
        decode_mask(b"not an image at all", name="mtxt.png", expected_shape=(20, 20))


# --------------------------------------------------------------------------- bombs, downscaling


def test_bomb_message_quotes_the_configured_limit_not_pillows_double() -> None:
    data = png_raw(30000, 30000, 8, 0, zlib.compress(b"\x00" * 30001 * 4))
    with pytest.raises(DatasetError) as info:
        decode_image(data, name="bomb.png")
    message = str(info.value)
    assert f"{Image.MAX_IMAGE_PIXELS:,}" in message and "900,000,000 pixels" in message
    assert f"{2 * Image.MAX_IMAGE_PIXELS:,}" not in message
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in message
    assert "decompression bomb" in message and "UNET_LENS_MAX_IMAGE_PIXELS" in message


@pytest.mark.parametrize("w, h, budget, expected", [
    (64, 48, 64 * 48, (64, 48)),  # exactly the budget: unchanged
    (8000, 8000, 2048 * 2048, (2048, 2048)),
    (8000, 4000, 2048 * 2048, (2896, 1448)),
    (100_000, 16, 16_000, (1000, 16)),  # the short side never drops under MIN_SIDE
])
def test_fit_size_keeps_the_aspect_within_the_budget(w, h, budget, expected) -> None:
    assert fit_size(w, h, budget) == expected
    fw, fh = fit_size(w, h, budget)
    assert fw * fh <= budget


def test_budget_plus_one_pixel_is_downscaled() -> None:
    data = encode(RNG.integers(0, 255, (48, 64, 3)).astype(np.uint8))
    same, notes = decode_image(data, name="a.png", fit_pixels=48 * 64)
    assert same.shape == (48, 64, 3) and "downscaled_from" not in notes
    small, notes = decode_image(data, name="a.png", fit_pixels=48 * 64 - 1)
    assert small.shape[0] * small.shape[1] <= 48 * 64 - 1
    assert notes["downscaled_from"] == "64x48"
    assert notes["downscaled_to"] == f"{small.shape[1]}x{small.shape[0]}"


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"),
                                       ("TIFF", "RGB"), ("PNG", "I;16")])
def test_downscaling_averages_the_area(fmt: str, mode: str) -> None:
    """Left half dark, right half bright: the downscaled image keeps the two halves."""
    arr = np.full((400, 800), 30, np.uint8)
    arr[:, 400:] = 220
    if mode == "P":
        im = Image.fromarray(arr).convert("P")
    elif mode == "I;16":
        im = Image.fromarray(arr.astype(np.uint16) * 256)
    else:
        im = Image.fromarray(np.repeat(arr[..., None], 3, axis=2))
    data = tiff_bytes(np.asarray(im)) if fmt == "TIFF" else encode(im, fmt)
    rgb, notes = decode_image(data, name=f"x.{fmt.lower()}", fit_pixels=100 * 50)
    assert rgb.shape == (50, 100, 3) and notes["downscaled_from"] == "800x400"
    left, right = rgb[:, :45].mean(), rgb[:, 55:].mean()
    assert right > left + 100, (left, right)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(monkeypatch) -> None:
    """Image.draft: the 4000² JPEG's DCT scale is reduced before its pixels are decoded."""
    from app.data import imageio

    data = encode(Image.new("RGB", (4000, 4000), (120, 130, 140)), "JPEG")
    seen: list[tuple[int, int]] = []
    original = imageio._fit_pil

    def spy(im, fit_pixels, notes):
        seen.append(im.size)
        return original(im, fit_pixels, notes)

    monkeypatch.setattr(imageio, "_fit_pil", spy)
    rgb, notes = decode_image(data, name="big.jpg", fit_pixels=500 * 500)
    assert rgb.shape == (500, 500, 3) and notes["downscaled_from"] == "4000x4000"
    assert seen == [(500, 500)]  # 1/8 scale: the 4000² pixels were never decoded
