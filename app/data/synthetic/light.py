"""Sunlight: the sun's direction vector and shadows cast from a height map."""

from __future__ import annotations

import math

import numpy as np

from app.data.synthetic.palette import _F


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
