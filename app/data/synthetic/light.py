"""Sunlight and the camera: the sun's direction, shadows cast from a height map, and the
acquisition (haze, white balance, exposure, sensor noise, optics blur) that makes the image."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from app.data.synthetic.palette import _F

#: Optics: a 3x3 Gaussian (sigma ~0.65 px), much cheaper than ImageFilter.GaussianBlur.
_BLUR = ImageFilter.Kernel((3, 3), (1, 3, 1, 3, 9, 3, 1, 3, 1), 25)


def _sun_vector(az: float, el: float) -> np.ndarray:
    a, e = math.radians(az), math.radians(el)
    return np.array([math.sin(a) * math.cos(e), -math.cos(a) * math.cos(e), math.sin(e)], _F)


def _shift_max(dst: np.ndarray, src: np.ndarray, ox: int, oy: int, drop: float) -> None:
    """dst[y, x] = max(dst[y, x], src[y + oy, x + ox] - drop) where the source is in bounds."""
    rows, cols = src.shape
    if abs(ox) >= cols or abs(oy) >= rows:
        return
    d = (slice(max(0, -oy), rows - max(0, oy)), slice(max(0, -ox), cols - max(0, ox)))
    s = (slice(max(0, oy), rows - max(0, -oy)), slice(max(0, ox), cols - max(0, -ox)))
    np.maximum(dst[d], src[s] - _F(drop), out=dst[d])


def _cast_shadow(height: np.ndarray, az: float, el: float) -> np.ndarray:
    """Boolean shadow of a height map (px units) for one sun direction.

    A pixel is shadowed when something along the ray towards the sun rises above the ray. The
    running maximum over ray steps is built by doubling (steps 1, 2, 4, ...), so a 40 px long
    shadow costs 6 whole-image passes instead of 40."""
    hmax = float(height.max())
    if hmax < 1.0:
        return np.zeros(height.shape, bool)
    tx, ty = math.sin(math.radians(az)), -math.cos(math.radians(az))
    step = 1.0 / max(abs(tx), abs(ty))  # one pixel along the major axis
    drop = step * math.tan(math.radians(el))  # the ray rises this much per step
    n = int(math.ceil(hmax / drop))
    occl = np.full(height.shape, -1.0, _F)  # max over steps 1..span of h(p + k d) - k drop
    _shift_max(occl, height, int(round(step * tx)), int(round(step * ty)), drop)
    span = 1
    while span < n:
        ox, oy = int(round(span * step * tx)), int(round(span * step * ty))
        _shift_max(occl, occl.copy(), ox, oy, span * drop)
        span *= 2
    return occl > height + 0.8


def _acquire(
    rng: np.random.Generator,
    rgb: np.ndarray,
    top: np.ndarray,
    grain: np.ndarray,
    az: float,
    el: float,
) -> np.ndarray:
    """The (H, W, 3) uint8 image of a painted scene: shadows from everything standing,
    softened into a penumbra and tinted by blue skylight; then acquisition: haze, white
    balance, exposure, sensor noise (``grain``), optics blur. Folded into as few whole-image
    operations as possible (they dominate the cost). ``rgb`` is modified in place."""
    shadow = Image.fromarray(_cast_shadow(top, az, el).astype(np.uint8) * 255)
    shadow = np.asarray(shadow.filter(ImageFilter.BoxBlur(1)), dtype=_F) * _F(1 / 255)
    amb = np.array([0.40, 0.44, 0.54], _F)
    haze = _F(rng.uniform(0.02, 0.09))
    gain = (rng.normal(1.0, 0.02, 3) * rng.uniform(0.93, 1.06)).astype(_F) * (1 - haze)
    for ch in range(3):
        rgb[ch] *= shadow * _F(-(1 - amb[ch]) * gain[ch]) + gain[ch]
    for ch, sky in enumerate((175, 185, 200)):
        rgb[ch] += grain + _F(sky * haze)
    np.clip(rgb, 0, 255, out=rgb)
    planes = [Image.fromarray(rgb[ch].astype(np.uint8)) for ch in range(3)]
    return np.asarray(Image.merge("RGB", planes).filter(_BLUR))
