"""Layout records (roads, lots, houses, trees) and the pixel geometry every step shares.

A scene is built in two stages that exchange only these records: the layout (``_Layout``) is
drawn once per location, the phase-independent ground (``_Base``) is textured once, and each
phase is painted from both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from app.data.synthetic.palette import _F

_Slices = tuple[slice, slice]  # (rows, cols) of a bounding box


@dataclass
class _Road:
    pts: np.ndarray  # (N, 2) centreline in pixels, x/y
    width: float  # asphalt width, px
    surface: int  # paved code
    sidewalk: bool
    main: bool


@dataclass
class _Rect:
    """Rotated rectangle: centre, angle of its u axis, half-lengths along u and v (pixels)."""

    cx: float
    cy: float
    theta: float
    a: float
    b: float

    def corners(self) -> list[tuple[float, float]]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        out = []
        for u, v in ((-self.a, -self.b), (self.a, -self.b), (self.a, self.b), (-self.a, self.b)):
            out.append((self.cx + u * c - v * s, self.cy + u * s + v * c))
        return out


@dataclass
class _House:
    cx: float
    cy: float
    theta: float
    sections: tuple[tuple[float, float, float, float], ...]  # (cu, cv, a, b) local, px
    outline: tuple[tuple[float, float], ...]  # local polygon corners
    roof: str  # "gable" | "hip" | "flat"
    pitch: float  # rise over run
    wall: float  # eave height, px
    colour: tuple[float, float, float]
    material: str
    kind: str  # "house" | "outbuilding" | "commercial"
    extras: tuple[tuple[str, float, float, float, float], ...] = ()  # (what, cu, cv, a, b)

    def polygon(self) -> tuple[tuple[float, float], ...]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        return tuple(
            (float(self.cx + u * c - v * s), float(self.cy + u * s + v * c))
            for u, v in self.outline
        )

    def radius(self) -> float:
        return max(math.hypot(u, v) for u, v in self.outline)


@dataclass
class _Tree:
    x: float
    y: float
    r: float  # canopy radius, px
    h: float  # top height, px
    kind: str  # "broad" | "pine" | "palm"
    tone: tuple[float, float, float]


@dataclass
class _Layout:
    size: int
    rho: float
    settlement: str
    shoreline: bool
    disaster_type: str
    sun_pre: tuple[float, float]  # azimuth, elevation (degrees)
    sun_post: tuple[float, float]
    lush: float
    soil_level: float
    severity: float
    flood_target: float
    shore_d: np.ndarray | None  # signed distance to the water line, px (water < 0)
    beach: float
    wind: float  # direction debris is blown, radians
    roads: list[_Road] = field(default_factory=list)
    houses: list[_House] = field(default_factory=list)
    trees: list[_Tree] = field(default_factory=list)
    cars: list[tuple[_Rect, tuple[int, int, int]]] = field(default_factory=list)
    paved: list[tuple[_Rect, int]] = field(default_factory=list)  # driveways, parking, bare lots
    pools: list[_Rect] = field(default_factory=list)
    lots: list[_Rect] = field(default_factory=list)
    stripes: list[tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=list)
    fields: list[tuple[_Rect, int]] = field(default_factory=list)  # rural crop parcels
    tex_seed: np.random.SeedSequence | None = None
    pre_seed: np.random.SeedSequence | None = None
    post_seed: np.random.SeedSequence | None = None


def _noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth value noise (unit std) with features about ``cell`` px: a random grid resized
    bicubically, which is fast and loop-free."""
    n = int(math.ceil(size / cell)) + 3
    grid = rng.standard_normal((n, n), dtype=_F)
    big = max(size + 2, int(round(n * cell)))
    full = np.asarray(Image.fromarray(grid).resize((big, big), Image.Resampling.BICUBIC))
    # Normalise over the whole grid, not the crop: a small scene of a large-cell field must keep
    # its (small) local variation rather than be blown up to unit std.
    std = float(full[:: max(1, big // 128), :: max(1, big // 128)].std()) or 1.0
    off = min(int(cell), big - size)
    return full[off : off + size, off : off + size] * _F(1.0 / std)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _local(
    cx: float, cy: float, theta: float, radius: float, size: int
) -> tuple[_Slices, np.ndarray, np.ndarray] | None:
    """Slices of the bounding box and local (u, v) coordinates of its pixel centres.

    Pixel (row r, col c) has its centre at (x=c, y=r), the convention of PIL and skimage
    polygon rasterisers, so masks built here match the polygons we publish."""
    x0, x1 = max(0, int(math.floor(cx - radius))), min(size, int(math.ceil(cx + radius)) + 1)
    y0, y1 = max(0, int(math.floor(cy - radius))), min(size, int(math.ceil(cy + radius)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1, dtype=_F)[None, :] - _F(cx)
    dy = np.arange(y0, y1, dtype=_F)[:, None] - _F(cy)
    c, s = _F(math.cos(theta)), _F(math.sin(theta))
    return (slice(y0, y1), slice(x0, x1)), dx * c + dy * s, dy * c - dx * s


def _rect_mask(rect: _Rect, size: int, margin: float = 0.0) -> tuple[_Slices, np.ndarray] | None:
    loc = _local(rect.cx, rect.cy, rect.theta, math.hypot(rect.a, rect.b) + margin + 1, size)
    if loc is None:
        return None
    sl, u, v = loc
    return sl, (np.abs(u) <= rect.a + margin) & (np.abs(v) <= rect.b + margin)


def _house_mask(
    h: _House, size: int, margin: float = 0.0
) -> tuple[_Slices, np.ndarray, np.ndarray, np.ndarray] | None:
    loc = _local(h.cx, h.cy, h.theta, h.radius() + margin + 1, size)
    if loc is None:
        return None
    sl, u, v = loc
    inside = np.zeros(u.shape, dtype=bool)
    for cu, cv, a, b in h.sections:
        inside |= (np.abs(u - cu) <= a + margin) & (np.abs(v - cv) <= b + margin)
    return sl, inside, u, v


def _polyline_frames(pts: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and unit tangents at arc lengths ``s`` along a polyline."""
    seg = np.diff(pts, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    x = np.interp(s, cum, pts[:, 0])
    y = np.interp(s, cum, pts[:, 1])
    x2 = np.interp(s + 2.0, cum, pts[:, 0])
    y2 = np.interp(s + 2.0, cum, pts[:, 1])
    x1 = np.interp(s - 2.0, cum, pts[:, 0])
    y1 = np.interp(s - 2.0, cum, pts[:, 1])
    t = np.stack([x2 - x1, y2 - y1], axis=1)
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-6)[:, None]
    return np.stack([x, y], axis=1), t


def _xy(pts: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in pts]


def _polyline_length(pts: np.ndarray) -> float:
    seg = np.diff(pts, axis=0)
    return float(np.hypot(seg[:, 0], seg[:, 1]).sum())


def _frame_rect(p: np.ndarray, theta: float, u: float, v: float, a: float, b: float) -> _Rect:
    c, s = math.cos(theta), math.sin(theta)
    return _Rect(p[0] + u * c - v * s, p[1] + u * s + v * c, theta, a, b)


@dataclass
class _Base:
    """Phase-independent rendering: textured ground, labels, building mask, noise fields."""

    rgb: np.ndarray  # (3, H, W) float32 ground colour, planar (see _planar)
    label: np.ndarray  # (H, W) uint8 ground label
    mask: np.ndarray  # (H, W) uint8 building footprints
    fine: np.ndarray
    small: np.ndarray
    med: np.ndarray
    large: np.ndarray
    paved: np.ndarray  # paved codes
    roof_tex: np.ndarray  # roof brightness texture
    leaf: np.ndarray  # canopy brightness texture
    crown: np.ndarray  # canopy outline jitter
    strip: np.ndarray  # where a storm strips leaves first
    grain: np.ndarray  # sensor noise, float32
    houses: list = field(default_factory=list)  # (slices, inside, u, v) per house


def _blend(rgb: np.ndarray, colour: tuple, weight: np.ndarray) -> None:
    """rgb <- rgb + (colour - rgb) * weight, in place, channel plane by channel plane."""
    for ch in range(3):
        rgb[ch] += (_F(colour[ch]) - rgb[ch]) * weight


def _erode(m: np.ndarray, n: int) -> np.ndarray:
    """Binary erosion by n pixels with shifts (cheap on the small per-building boxes)."""
    out = m.copy()
    for _ in range(n):
        e = out.copy()
        e[1:, :] &= out[:-1, :]
        e[:-1, :] &= out[1:, :]
        e[:, 1:] &= out[:, :-1]
        e[:, :-1] &= out[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        out = e
    return out
