"""Synthetic aerial scenes: the shipped demo's data.

Why: the dashboard must run, and its U-Net must train, without the xBD download. So every scene
is a deterministic function of ``(seed, index, size)`` that looks like a 0.5 m/pixel satellite
image of a suburb, a rural road or a coast before and after a hurricane, with building
footprints as labels. Buildings are told apart from roads and soil by their shape, roof shading
and cast shadow rather than by a unique colour (grey roofs look like asphalt, brown ones like
soil, white ones like concrete), so the segmentation task is learnable but not trivial.

The ground sampling distance is fixed at 0.5 m/pixel whatever ``size`` is: ``size`` sets the
extent (1024 px = 512 m), so buildings keep xBD-like pixel sizes in small test scenes.

Rendering is layered: a layout (roads, lots, buildings, trees, cars, shore) is drawn from a
generator seeded by ``SeedSequence([seed, index, size])`` (never global state); the ground is
textured once; each phase then paints cars, roofs and canopies through a height z-buffer,
casts shadows from that height map along the phase's own sun direction, and (post only) adds
roof damage, debris, sand overwash and flood water. Colour work is done on planar (3, H, W)
float32 planes: numpy broadcasts over a trailing axis of 3 several times slower.

Labels: ``mask`` is every building footprint in both phases (xBD keeps the polygon of a
destroyed building), rasterised with pixel (row r, col c) centred at (x=c, y=r) - the PIL and
skimage convention - so it equals the published polygons drawn by either. ``meta`` holds:
disaster, disaster_type ("wind" | "flooding"), phase, gsd (0.5), sun_azimuth and
sun_elevation (degrees, this phase), density (buildings per km²), settlement ("rural" |
"suburban" | "dense"), shoreline, n_buildings, land_* (grass, soil, sand, water, road, tree,
building: pixel fractions seen from above, summing to 1) and flooded_fraction (0 in pre).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from app.data.base import DAMAGE_CLASSES, Building, Scene

GSD_M: float = 0.5
PHASES: tuple[str, ...] = ("pre", "post")
SOURCE = "synthetic"
DISASTER = "synthetic-hurricane"
MIN_SIZE = 64

_F = np.float32
_Slices = tuple[slice, slice]  # (rows, cols) of a bounding box
#: Optics: a 3x3 Gaussian (sigma ~0.65 px), much cheaper than ImageFilter.GaussianBlur.
_BLUR = ImageFilter.Kernel((3, 3), (1, 3, 1, 3, 9, 3, 1, 3, 1), 25)

# Ground label codes (land-cover fractions in ``meta``).
_GRASS, _SOIL, _SAND, _WATER, _ROAD = 0, 1, 2, 3, 4

# Paved-layer codes drawn with PIL (0 = unpaved). Asphalt codes index a tone table.
_ASPHALT0, _N_ASPHALT = 1, 8
_CONCRETE, _GRAVEL, _POOL, _BARE = 50, 51, 52, 53

#: Roof colours (sRGB), material and relative frequency. Greys overlap asphalt, browns overlap
#: soil and whites overlap concrete on purpose: colour alone must not give buildings away.
_ROOFS: tuple[tuple[tuple[int, int, int], str, float], ...] = (
    ((122, 120, 117), "shingle", 0.20),
    ((80, 81, 85), "shingle", 0.13),
    ((126, 103, 85), "shingle", 0.13),
    ((158, 140, 118), "shingle", 0.07),
    ((164, 104, 82), "tile", 0.06),
    ((216, 215, 209), "metal", 0.10),
    ((184, 187, 187), "metal", 0.08),
    ((98, 115, 106), "metal", 0.04),
    ((108, 117, 131), "shingle", 0.07),
    ((132, 80, 68), "metal", 0.03),
    ((201, 188, 163), "shingle", 0.06),
)
_ROOF_CUM = np.cumsum([r[2] for r in _ROOFS]) / sum(r[2] for r in _ROOFS)
#: Sheds and barns favour metal roofs.
_ROOF_CUM_SHED = np.cumsum([r[2] * (5 if r[1] == "metal" else 1) for r in _ROOFS])
_ROOF_CUM_SHED = _ROOF_CUM_SHED / _ROOF_CUM_SHED[-1]
_FLAT_ROOFS = ((208, 208, 203), (176, 176, 172), (150, 151, 150), (228, 226, 220))
_CAR_COLOURS = (
    (226, 226, 224),
    (32, 33, 36),
    (165, 167, 170),
    (110, 112, 116),
    (150, 38, 34),
    (42, 62, 120),
    (196, 186, 160),
    (225, 225, 225),
    (60, 60, 62),
)
_DEBRIS = np.array(
    [
        (196, 172, 132),
        (150, 120, 88),
        (214, 212, 204),
        (128, 126, 122),
        (92, 78, 64),
        (176, 160, 140),
        (230, 228, 220),
        (70, 66, 62),
    ],
    dtype=_F,
)
#: Collapsed-house rubble: weathered timber, drywall, insulation, roofing, dark voids.
_RUBBLE = np.array(
    [
        (72, 66, 60),
        (104, 94, 82),
        (132, 120, 102),
        (150, 138, 120),
        (122, 118, 112),
        (170, 160, 142),
        (142, 126, 104),
        (188, 180, 164),
        (92, 86, 80),
    ],
    dtype=_F,
)


# --------------------------------------------------------------------------------------------
# Layout records


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


# --------------------------------------------------------------------------------------------
# Small helpers


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


# --------------------------------------------------------------------------------------------
# Layout


def _make_house(
    rng: np.random.Generator, w: float, d: float, kind: str, rho: float
) -> tuple[tuple, tuple, str, float, float, tuple[float, float, float], str, tuple]:
    """Footprint (rectangle or L), roof type, pitch, eave height, colour and material."""
    extras: tuple = ()
    if kind == "commercial":
        sections = ((0.0, 0.0, w / 2, d / 2),)
        outline = ((-w / 2, -d / 2), (w / 2, -d / 2), (w / 2, d / 2), (-w / 2, d / 2))
        colour = _FLAT_ROOFS[int(rng.integers(len(_FLAT_ROOFS)))]
        units = []
        for _ in range(int(rng.integers(2, 7))):
            ua, ub = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.0)
            units.append(
                (
                    "unit",
                    rng.uniform(-w / 2 + 5, w / 2 - 5),
                    rng.uniform(-d / 2 + 5, d / 2 - 5),
                    ua,
                    ub,
                )
            )
        extras = tuple(units)
        return sections, outline, "flat", 0.0, rng.uniform(8, 16), colour, "membrane", extras
    if kind == "house" and rng.random() < 0.38 and w > 26 and d > 22:
        w1 = w * rng.uniform(0.35, 0.6)
        d1 = d * rng.uniform(0.5, 0.72)
        sx, sy = (1 if rng.random() < 0.5 else -1), (1 if rng.random() < 0.5 else -1)
        pts = (
            (-w / 2, -d / 2),
            (w / 2, -d / 2),
            (w / 2, -d / 2 + d1),
            (-w / 2 + w1, -d / 2 + d1),
            (-w / 2 + w1, d / 2),
            (-w / 2, d / 2),
        )
        outline = tuple((sx * u, sy * v) for u, v in pts)
        sections = (
            (0.0, sy * (-d / 2 + d1 / 2), w / 2, d1 / 2),
            (sx * (-w / 2 + w1 / 2), 0.0, w1 / 2, d / 2),
        )
    else:
        sections = ((0.0, 0.0, w / 2, d / 2),)
        outline = ((-w / 2, -d / 2), (w / 2, -d / 2), (w / 2, d / 2), (-w / 2, d / 2))
    cum = _ROOF_CUM_SHED if kind == "outbuilding" else _ROOF_CUM
    k = min(int(np.searchsorted(cum, rng.random())), len(_ROOFS) - 1)
    base, material, _ = _ROOFS[k]
    jitter = rng.normal(1.0, 0.05) * rng.normal(1.0, 0.025, 3)
    colour = tuple(min(245.0, max(20.0, float(c * j))) for c, j in zip(base, jitter, strict=True))
    roof = "hip" if rng.random() < (0.45 if material != "metal" else 0.15) else "gable"
    pitch = rng.uniform(0.3, 0.6) if kind == "house" else rng.uniform(0.15, 0.3)
    storeys = 2 if (kind == "house" and rng.random() < 0.15 + 0.3 * rho) else 1
    wall = storeys * rng.uniform(6.0, 7.0) + rng.uniform(0, 2.5)  # some raised on piers
    cu, cv, a, b = sections[0]
    fixtures = []
    if kind == "house" and rng.random() < 0.3:
        # Chimney: a small box standing on the roof, with its own little shadow.
        fixtures.append(
            (
                "chimney",
                cu + rng.uniform(-0.7, 0.7) * a,
                cv + rng.uniform(-0.6, 0.6) * b,
                rng.uniform(1.2, 2.0),
                rng.uniform(1.2, 2.0),
            )
        )
    if kind == "house" and rng.random() < 0.07 and a > 12:
        # Solar array on one face of the main section.
        sgn = 1 if rng.random() < 0.5 else -1
        if a >= b:
            fixtures.append(
                ("solar", cu + rng.uniform(-0.3, 0.3) * a, cv + sgn * b * 0.5, a * 0.45, b * 0.32)
            )
        else:
            fixtures.append(
                ("solar", cu + sgn * a * 0.5, cv + rng.uniform(-0.3, 0.3) * b, a * 0.32, b * 0.45)
            )
    return sections, outline, roof, pitch, wall, colour, material, tuple(fixtures)


def _suburban_roads(rng: np.random.Generator, size: int, rho: float, phi: float) -> list[_Road]:
    """Parallel streets (some gently curved) joined by cross streets with T junctions."""
    c0 = np.array([size / 2, size / 2])
    reach = size * 0.75 + 120
    eu = np.array([math.cos(phi), math.sin(phi)])
    ev = np.array([-math.sin(phi), math.cos(phi)])
    spacing = (270 - 95 * rho) * rng.uniform(0.92, 1.1)
    vs = np.arange(-reach + rng.uniform(0, spacing), reach, spacing)
    curvy = rng.random() < 0.35
    us = np.arange(-reach, reach + 8, 8.0)
    sidewalk = rng.random() < 0.25 + 0.6 * rho
    main = int(rng.integers(len(vs))) if rng.random() < 0.55 else -1
    offsets = []
    roads = []
    for i, v in enumerate(vs):
        amp = rng.uniform(0.06, 0.16) * spacing if curvy else 0.0
        lam, psi = rng.uniform(500, 1300), rng.uniform(0, 2 * math.pi)
        off = amp * np.sin(2 * math.pi * us / lam + psi)
        offsets.append((amp, lam, psi))
        pts = c0 + us[:, None] * eu + (v + off)[:, None] * ev
        width = rng.uniform(24, 30) if i == main else rng.uniform(13, 17)
        roads.append(
            _Road(pts, width, _ASPHALT0 + int(rng.integers(_N_ASPHALT)), sidewalk, i == main)
        )
    cross_gap = rng.uniform(360, 720)
    for u in np.arange(-reach + rng.uniform(0, cross_gap), reach, cross_gap):
        for i in range(len(vs) - 1):
            if rng.random() > 0.72:
                continue
            ends = []
            for j in (i, i + 1):
                amp, lam, psi = offsets[j]
                ends.append(vs[j] + amp * math.sin(2 * math.pi * u / lam + psi))
            vv = np.linspace(ends[0] - 2, ends[1] + 2, 24)
            pts = c0 + u * eu + vv[:, None] * ev
            width = rng.uniform(13, 16)
            roads.append(
                _Road(pts, width, _ASPHALT0 + int(rng.integers(_N_ASPHALT)), sidewalk, False)
            )
    return roads


def _rural_roads(rng: np.random.Generator, size: int, phi: float) -> list[_Road]:
    """Two to four country roads crossing the scene, some gravel, some bending."""
    roads = []
    reach = size * 0.8 + 100
    for i in range(int(rng.integers(2, 5))):
        ang = phi + (0 if i == 0 else rng.choice([math.pi / 2, rng.uniform(0.3, 2.8)]))
        centre = np.array([size / 2, size / 2]) + rng.uniform(-0.3, 0.3, 2) * size
        t = np.arange(-reach, reach + 8, 8.0)
        e = np.array([math.cos(ang), math.sin(ang)])
        n = np.array([-e[1], e[0]])
        bend = rng.uniform(0, 60) * np.sin(
            2 * math.pi * t / rng.uniform(700, 1600) + rng.uniform(0, 6)
        )
        pts = centre + t[:, None] * e + bend[:, None] * n
        gravel = rng.random() < 0.3
        surface = _GRAVEL if gravel else _ASPHALT0 + int(rng.integers(_N_ASPHALT))
        roads.append(
            _Road(
                pts,
                rng.uniform(9, 11) if gravel else rng.uniform(11, 15),
                surface,
                False,
                i == 0 and not gravel,
            )
        )
    return roads


class _Occupancy:
    """What is already taken, so buildings, pools and trees never overlap each other or roads."""

    def __init__(self, size: int, roads: list[_Road], blocked: np.ndarray | None) -> None:
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for road in roads:
            half = road.width / 2 + (7 if road.sidewalk else 2)
            draw.line(_xy(road.pts), fill=1, width=int(round(2 * half)))
        self.road = np.asarray(img, dtype=bool).copy()
        self.build = np.zeros((size, size), dtype=bool)
        if blocked is not None:
            self.road |= blocked
        self.size = size

    def free_house(self, h: _House, margin: float) -> tuple[_Slices, np.ndarray] | None:
        """The house's (slices, mask) grown by ``margin`` if that area is free, else None."""
        got = _house_mask(h, self.size, margin)
        if got is None:
            return None
        sl, inside, _, _ = got
        if (self.road[sl] & inside).any() or (self.build[sl] & inside).any():
            return None
        return sl, inside

    def take(self, got: tuple[_Slices, np.ndarray]) -> None:
        sl, inside = got
        self.build[sl] |= inside

    def free_rect(self, r: _Rect, road_ok: bool = False) -> bool:
        got = _rect_mask(r, self.size)
        if got is None:
            return True
        sl, inside = got
        if (self.build[sl] & inside).any():
            return False
        return road_ok or not (self.road[sl] & inside).any()

    def take_rect(self, r: _Rect, road: bool = True) -> None:
        got = _rect_mask(r, self.size)
        if got is not None:
            sl, inside = got
            (self.road if road else self.build)[sl] |= inside


def _frame_rect(p: np.ndarray, theta: float, u: float, v: float, a: float, b: float) -> _Rect:
    c, s = math.cos(theta), math.sin(theta)
    return _Rect(p[0] + u * c - v * s, p[1] + u * s + v * c, theta, a, b)


def _place_along(
    rng: np.random.Generator,
    lay: _Layout,
    occ: _Occupancy,
    road: _Road,
    rural: bool,
    coastal: bool,
) -> None:
    """Walk both sides of a road, dropping lots with a house, driveway, maybe a pool and car."""
    size, rho = lay.size, lay.rho
    length = _polyline_length(road.pts)
    edge = road.width / 2 + (7 if road.sidewalk else 2)
    for side in (1, -1):
        # Cut the road side into lots first, then get all lot frames in one vectorised call.
        lots = []
        s = rng.uniform(0, 40)
        while s < length:
            lot_w = rng.uniform(50, 110) if rural else (66 - 24 * rho) * rng.uniform(0.9, 1.12)
            commercial = (not rural) and road.main and rng.random() < 0.18
            if commercial:
                lot_w = rng.uniform(90, 150)
            lots.append((s + lot_w / 2, lot_w, commercial))
            s += lot_w
        if not lots:
            continue
        ps, ts = _polyline_frames(road.pts, np.array([m for m, _, _ in lots]))
        for (_, lot_w, commercial), p, t in zip(lots, ps, ts, strict=True):
            if not (-30 <= p[0] <= size + 30 and -30 <= p[1] <= size + 30):
                continue
            theta = math.atan2(t[1], t[0]) + (0.0 if side == 1 else math.pi)
            p_in = p  # point on the road centre line
            if commercial:
                w, d = min(80.0, lot_w * rng.uniform(0.6, 0.8)), rng.uniform(48, 80)
                setback = rng.uniform(34, 60)
            elif rural:
                w, d = rng.uniform(28, 54), rng.uniform(24, 40)
                setback = rng.uniform(16, 70)
            else:
                w = min(lot_w - 12, rng.uniform(24, 44))
                d = rng.uniform(22, 36)
                setback = rng.uniform(10, 22)
            fill = 0.8 if rural else 0.55 + 0.4 * rho
            if not commercial and rng.random() > fill:
                if not rural and rng.random() < 0.25:
                    bare = _frame_rect(p_in, theta, 0, edge + 8 + 20, lot_w / 2 - 4, 22)
                    if occ.free_rect(bare):
                        lay.paved.append((bare, _BARE))
                continue
            jitter = rng.normal(0, 0.14 if rural else 0.03)
            c_v = edge + setback + d / 2
            c_u = rng.normal(0, 0.06 * lot_w)
            c, sn = math.cos(theta), math.sin(theta)
            hx, hy = p_in[0] + c_u * c - c_v * sn, p_in[1] + c_u * sn + c_v * c
            if not (0 <= hx < size and 0 <= hy < size):
                continue
            if occ.road[int(hy), int(hx)] or occ.build[int(hy), int(hx)]:
                continue  # cheap early reject before building the footprint
            kind = "commercial" if commercial else "house"
            sections, outline, roof, pitch, wall, colour, mat, extras = _make_house(
                rng, w, d, kind, rho
            )
            house = _House(
                hx,
                hy,
                theta + jitter,
                sections,
                outline,
                roof,
                pitch,
                wall,
                colour,
                mat,
                kind,
                extras,
            )
            spot = occ.free_house(house, 4.0)
            if spot is None:
                continue
            # Driveway (or parking lot) from the front of the house to the road centre line.
            if commercial:
                drive = _frame_rect(
                    p_in, theta, c_u, (edge + setback) / 2 + 1, w / 2 + 6, (edge + setback) / 2 + 1
                )
                if not occ.free_rect(drive, road_ok=True):
                    continue
                lay.paved.append((drive, _ASPHALT0 + int(rng.integers(_N_ASPHALT))))
                for k in np.arange(-w / 2 + 4, w / 2 - 2, 5.5):
                    a = (
                        p_in[0] + (c_u + k) * c - (edge + 6) * sn,
                        p_in[1] + (c_u + k) * sn + (edge + 6) * c,
                    )
                    b = (a[0] - 10 * sn, a[1] + 10 * c)
                    lay.stripes.append((a, b))
                    if rng.random() < 0.45:
                        lay.cars.append(
                            (
                                _frame_rect(p_in, theta, c_u + k + 2.75, edge + 11, 2.0, 4.4),
                                _car_colour(rng),
                            )
                        )
            else:
                dw = rng.uniform(4.5, 6.5) if not rural else rng.uniform(3.5, 5)
                du = c_u + rng.choice([-1, 1]) * (w / 2 - dw - rng.uniform(1, 5))
                length_d = setback + edge - 1
                drive = _frame_rect(p_in, theta, du, length_d / 2, dw, length_d / 2 + 1)
                if not occ.free_rect(drive, road_ok=True):
                    continue
                surf = (
                    _GRAVEL
                    if (rural and rng.random() < 0.6)
                    else (
                        _CONCRETE
                        if rng.random() < 0.75
                        else _ASPHALT0 + int(rng.integers(_N_ASPHALT))
                    )
                )
                lay.paved.append((drive, surf))
                if rng.random() < 0.55:
                    cv = edge + rng.uniform(4, max(5, setback - 6))
                    lay.cars.append(
                        (_frame_rect(p_in, theta + math.pi / 2, du, cv, 4.4, 2.0), _car_colour(rng))
                    )
                if (not rural) and rng.random() < 0.08:
                    lay.cars.append(
                        (
                            _frame_rect(p_in, theta, c_u - w / 4, road.width / 2 - 3, 4.4, 2.0),
                            _car_colour(rng),
                        )
                    )
            occ.take(spot)
            occ.take_rect(drive)
            lay.houses.append(house)
            if not rural and not commercial:
                lay.lots.append(
                    _frame_rect(
                        p_in,
                        theta,
                        c_u,
                        edge + 1 + (setback + d + 30) / 2,
                        lot_w / 2,
                        (setback + d + 30) / 2,
                    )
                )
            back = c_v + d / 2
            # Backyard pool.
            if not commercial and rng.random() < (0.28 if coastal else 0.1) * (0.4 + rho):
                pa, pb = rng.uniform(6, 10), rng.uniform(3.5, 6)
                pool = _frame_rect(
                    p_in,
                    theta + jitter,
                    c_u + rng.uniform(-w / 4, w / 4),
                    back + pb + rng.uniform(5, 10),
                    pa,
                    pb,
                )
                deck = _Rect(pool.cx, pool.cy, pool.theta, pa + 3, pb + 3)
                if occ.free_rect(deck):
                    occ.take_rect(deck)
                    lay.pools.append(pool)
            # Detached garage, shed or barn.
            if rng.random() < (0.65 if rural else 0.12):
                ow, od = (
                    (rng.uniform(20, 56), rng.uniform(16, 34))
                    if rural
                    else (rng.uniform(15, 24), rng.uniform(14, 20))
                )
                ou = c_u + rng.uniform(-lot_w / 3, lot_w / 3)
                ov = back + od / 2 + rng.uniform(6, 30 if rural else 12)
                o = _frame_rect(
                    p_in,
                    theta + jitter + (rng.choice([0, math.pi / 2]) if rural else 0),
                    ou,
                    ov,
                    1,
                    1,
                )
                sec, outl, roof, pitch, wall, colour, mat, ex = _make_house(
                    rng, ow, od, "outbuilding", rho
                )
                shed = _House(
                    o.cx,
                    o.cy,
                    o.theta,
                    sec,
                    outl,
                    roof,
                    pitch,
                    wall * 0.8,
                    colour,
                    mat,
                    "outbuilding",
                    ex,
                )
                spot = (
                    occ.free_house(shed, 4.0)
                    if 0 <= shed.cx < size and 0 <= shed.cy < size
                    else None
                )
                if spot is not None:
                    occ.take(spot)
                    lay.houses.append(shed)
            if rural and rng.random() < 0.3:
                lay.fields.append(
                    (
                        _frame_rect(
                            p_in,
                            theta,
                            c_u,
                            edge + setback + d + 140,
                            rng.uniform(80, 160),
                            rng.uniform(60, 110),
                        ),
                        int(rng.integers(4)),
                    )
                )


def _car_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]


def _place_trees(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, density: float, coastal: bool
) -> None:
    """Clustered canopies: backyards, random groves, street rows and (rural) woodland."""
    size = lay.size
    cands: list[tuple[float, float, bool]] = []  # x, y, may overhang road
    for h in lay.houses:
        if h.kind == "house" and rng.random() < 0.35 + 0.5 * density:
            c, s = math.cos(h.theta), math.sin(h.theta)
            back = max(v for _, v in h.outline) + rng.uniform(8, 30)
            u = rng.uniform(-20, 20)
            cx, cy = h.cx + u * c - back * s, h.cy + u * s + back * c
            for _ in range(int(rng.integers(1, 6))):
                cands.append((cx + rng.normal(0, 12), cy + rng.normal(0, 12), False))
    n_groves = int(density * (size / 200) ** 2 * rng.uniform(2, 5))
    for _ in range(n_groves):
        gx, gy = rng.uniform(0, size, 2)
        spread = rng.uniform(10, 35)
        for _ in range(int(rng.integers(3, 14))):
            cands.append((gx + rng.normal(0, spread), gy + rng.normal(0, spread), False))
    if rng.random() < 0.35:
        for road in lay.roads:
            if not road.sidewalk:
                continue
            length = _polyline_length(road.pts)
            s = np.arange(rng.uniform(0, 30), length, rng.uniform(28, 50))
            p, t = _polyline_frames(road.pts, s)
            n = np.stack([-t[:, 1], t[:, 0]], axis=1)
            for side in (1, -1):
                q = p + n * side * (road.width / 2 + 2.5)
                for x, y in q:
                    if 0 <= x < size and 0 <= y < size and rng.random() < 0.7:
                        cands.append((x, y, True))
    if lay.settlement == "rural" or density > 0.7:
        # Woodland: a jittered grid of trees where low-frequency noise is high.
        spacing = 15.0
        n = int(math.ceil(size / spacing))
        wood = _noise(rng, n, 90 / spacing)
        gy, gx = np.mgrid[0:n, 0:n].astype(float) * spacing
        gx += rng.uniform(-5, 5, gx.shape)
        gy += rng.uniform(-5, 5, gy.shape)
        keep = wood > 1.3 - 0.9 * density
        cands.extend((float(x), float(y), False) for x, y in zip(gx[keep], gy[keep], strict=True))
    if not cands:
        return
    arr = np.array(cands, dtype=float)
    x, y, road_ok = arr[:, 0], arr[:, 1], arr[:, 2] > 0
    keep = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    x, y, road_ok = x[keep], y[keep], road_ok[keep]
    xi, yi = x.astype(int), y.astype(int)
    keep = ~occ.build[yi, xi] & (road_ok | ~occ.road[yi, xi])
    if lay.shore_d is not None:
        keep &= lay.shore_d[yi, xi] >= lay.beach + 6
    x, y = x[keep], y[keep]
    n = len(x)
    # Species mix: broadleaf, pine, and (on the coast) palms; sizes and heights in px.
    roll = rng.random(n)
    palm = (roll < 0.35) if coastal else np.zeros(n, bool)
    pine = ~palm & (roll > 0.78)
    r = np.where(
        palm, rng.uniform(5, 9, n), np.where(pine, rng.uniform(4, 7.5, n), rng.uniform(5, 13, n))
    )
    h = np.where(
        palm, rng.uniform(16, 26, n), np.where(pine, rng.uniform(16, 28, n), rng.uniform(10, 24, n))
    )
    base = np.where(
        palm[:, None], (88, 104, 58), np.where(pine[:, None], (42, 60, 44), (58, 76, 44))
    )
    tone = base * rng.normal(1.0, 0.08, (n, 1)) * rng.normal(1.0, 0.04, (n, 3))
    # Keep the trunk out of roofs; the canopy may overhang a roof edge slightly.
    ok = np.ones(n, bool)
    for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):
        px = np.clip((x + 0.55 * r * dx).astype(int), 0, size - 1)
        py = np.clip((y + 0.55 * r * dy).astype(int), 0, size - 1)
        ok &= ~occ.build[py, px]
    kinds = np.where(palm, "palm", np.where(pine, "pine", "broad"))
    for i in np.flatnonzero(ok):
        lay.trees.append(
            _Tree(float(x[i]), float(y[i]), float(r[i]), float(h[i]), str(kinds[i]), tuple(tone[i]))
        )
    # Foundation shrubs hugging the walls: lower than any eave, so they never cover a roof.
    for h in lay.houses:
        if h.kind != "house":
            continue
        c, s = math.cos(h.theta), math.sin(h.theta)
        us = [p[0] for p in h.outline]
        vs = [p[1] for p in h.outline]
        for _ in range(int(rng.poisson(1.0 + 3.0 * density))):
            r = rng.uniform(2.0, 4.0)
            side = rng.integers(3)
            if side == 0:
                u, v = rng.uniform(min(us), max(us)), min(vs) - r - 1.5
            else:
                u, v = (
                    (min(us) - r - 1.5) if side == 1 else (max(us) + r + 1.5),
                    rng.uniform(min(vs), max(vs)),
                )
            x, y = h.cx + u * c - v * s, h.cy + u * s + v * c
            if 0 <= x < size and 0 <= y < size and not occ.road[int(y), int(x)]:
                g = rng.normal(1.0, 0.1)
                tone = (62 * g, 84 * g, 48 * g)
                lay.trees.append(_Tree(float(x), float(y), r, rng.uniform(2.0, 5.0), "broad", tone))


def _layout(seed: int, index: int, size: int) -> _Layout:
    """Everything that is the same in both phases: geometry, palette and scene parameters."""
    ss = np.random.SeedSequence([seed, index, size])
    lay_ss, tex_ss, pre_ss, post_ss = ss.spawn(4)
    rng = np.random.default_rng(lay_ss)
    rho = float(np.clip(rng.beta(1.8, 1.2), 0.05, 1.0))
    settlement = "rural" if rho < 0.3 else ("suburban" if rho < 0.72 else "dense")
    shoreline = bool(rng.random() < 0.35)
    disaster_type = "flooding" if rng.random() < 0.35 else "wind"
    az = float(rng.uniform(95, 265))
    el = float(rng.uniform(32, 60))
    sun_post = (
        float((az + rng.normal(0, 14)) % 360),
        float(np.clip(el + rng.normal(0, 6), 32, 72)),
    )
    phi = (
        rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.04)
        if rng.random() < 0.5
        else rng.uniform(0, math.pi)
    )
    shore_d = None
    beach = float(rng.uniform(18, 55))
    if shoreline:
        ang = rng.uniform(0, 2 * math.pi)
        nx, ny = math.cos(ang), math.sin(ang)  # points inland
        coords = np.arange(size, dtype=_F) - _F(size / 2)
        # Put the water line so that 8..35 % of the scene is sea.
        proj = coords[None, :] * _F(nx) + coords[:, None] * _F(ny)
        level = float(np.quantile(proj[::8, ::8], rng.uniform(0.08, 0.35)))
        wobble = _noise(rng, size, 160) * _F(rng.uniform(10, 40)) + _noise(rng, size, 40) * _F(4)
        shore_d = (proj - _F(level) + wobble).astype(_F)
        if rng.random() < 0.7:
            phi = ang + math.pi / 2  # streets parallel to the coast
    lay = _Layout(
        size=size,
        rho=rho,
        settlement=settlement,
        shoreline=shoreline,
        disaster_type=disaster_type,
        sun_pre=(az, el),
        sun_post=sun_post,
        lush=float(rng.uniform(-0.25, 0.25)),
        soil_level=float(rng.uniform(0.6, 1.6)),
        severity=float(rng.beta(1.4, 2.4)),
        flood_target=float(rng.uniform(0.12, 0.4)),
        shore_d=shore_d,
        beach=beach,
        wind=float(rng.uniform(0, 2 * math.pi)),
        tex_seed=tex_ss,
        pre_seed=pre_ss,
        post_seed=post_ss,
    )
    rural = settlement == "rural"
    lay.roads = _rural_roads(rng, size, phi) if rural else _suburban_roads(rng, size, rho, phi)
    blocked = None if shore_d is None else shore_d < beach + 10
    occ = _Occupancy(size, lay.roads, blocked)
    order = sorted(range(len(lay.roads)), key=lambda i: (not lay.roads[i].main, i))
    for i in order:
        _place_along(rng, lay, occ, lay.roads[i], rural, shoreline)
    tree_density = float(np.clip(rng.beta(2, 2) + (0.3 if rural else 0.0), 0.05, 1.0))
    _place_trees(rng, lay, occ, tree_density, shoreline)
    return lay


# --------------------------------------------------------------------------------------------
# Rendering


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


def _base(lay: _Layout) -> _Base:
    size = lay.size
    rng = np.random.default_rng(lay.tex_seed)
    fine = _noise(rng, size, 1.3)
    small = _noise(rng, size, 5)
    med = _noise(rng, size, 22)
    large = _noise(rng, size, 90)
    huge = _noise(rng, size, 260)
    # Extra independent-looking fields for free: flipped copies (no seams, unlike
    # np.roll, whose wrap-around edge shows as a straight line in smooth noise).
    med2 = np.ascontiguousarray(med[:, ::-1])
    small2 = np.ascontiguousarray(small[::-1, :])

    # Natural ground: grass from lush to dry, patches of bare soil.
    # Per channel: dry * X + (lush - dry) * Y + soil * Z with three shared scalar fields.
    veg = np.clip(0.55 + 0.22 * huge + 0.14 * large + 0.08 * med + lay.lush, 0.0, 1.0)
    soil_w = _smoothstep(0.0, 0.35, 0.6 * med2 + 0.3 * large + 0.25 * small2 - lay.soil_level)
    x_f = (1 + 0.05 * small + 0.035 * fine + 0.05 * med2) * (1 - soil_w)
    y_f = x_f * veg
    z_f = (1 + 0.08 * small2 + 0.06 * fine) * soil_w
    rgb = np.empty((3, size, size), _F)
    for ch, (dry, lush, soil) in enumerate(
        zip((152, 145, 108), (86, 102, 64), (150, 124, 96), strict=True)
    ):
        np.multiply(x_f, _F(dry), out=rgb[ch])
        rgb[ch] += y_f * _F(lush - dry)
        rgb[ch] += z_f * _F(soil)
    label = np.where(soil_w > 0.5, _SOIL, _GRASS).astype(np.uint8)

    # Suburban lawns: each lot mowed and watered a little differently.
    if lay.lots:
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for i, lot in enumerate(lay.lots):
            draw.polygon(lot.corners(), fill=1 + i % 250)
        idx = np.asarray(img)
        tints = np.ones((256, 3), _F)
        tints[1:] = rng.normal(1.0, 0.05, (255, 1)) * rng.normal(1.0, 0.03, (255, 3))
        tints[1:, 1] *= rng.normal(1.02, 0.03, 255)
        for ch in range(3):
            rgb[ch] *= tints[:, ch][idx]  # index 0 (no lot) has tint 1

    # Rural crop parcels with row stripes.
    if lay.fields:
        crops = np.array([(122, 128, 86), (158, 146, 110), (134, 116, 92), (104, 118, 76)], _F)
        for rect, k in lay.fields:
            got = _rect_mask(rect, size)
            if got is None:
                continue
            sl, inside = got
            loc = _local(rect.cx, rect.cy, rect.theta, math.hypot(rect.a, rect.b) + 1, size)
            rows = 1 + 0.05 * np.sin(loc[2] * (2 * math.pi / 4.0)) + 0.04 * med[sl]
            shade = (rows * (1 + 0.05 * small[sl]))[inside]
            rgb[(slice(None), *sl)][:, inside] = crops[k][:, None] * shade
            label[sl][inside] = _SOIL if k == 2 else _GRASS

    # Shore: sea, wet sand, beach, dune grass.
    if lay.shore_d is not None:
        # Shore colours are functions of the (noise-jittered) distance to the water line, so they
        # are looked up in 1-D tables: sea deepening offshore, surf bands, wet sand, beach, and
        # the irregular inland edge of the beach. Only pixels near or in the sea are touched.
        sel = np.flatnonzero(lay.shore_d.ravel() < lay.beach + 45)
        d = lay.shore_d.ravel()[sel]
        sm, fi, md = small.ravel()[sel], fine.ravel()[sel], med.ravel()[sel]
        dist = np.arange(-256, 256, dtype=_F)
        qi = np.clip(d + 3 * sm + 256, 0, 511).astype(np.intp)
        qs = np.clip(d + 2 * sm + 10 * md + 14 * large.ravel()[sel] + 256, 0, 511).astype(np.intp)
        depth = np.clip(-dist / 90.0, 0, 1) ** 0.6
        shallow = np.array([104, 150, 146], _F)
        deep = np.array([34, 70, 88], _F)
        sea_lut = shallow + (deep - shallow) * depth[:, None]
        surf = np.exp(-(((dist + 5) / 2.5) ** 2)) + 0.35 * np.exp(-(((dist + 17) / 3.0) ** 2))
        surf[surf < 1e-3] = 0  # no float32 denormals: they make every later multiply crawl
        # Breakers: bands along the shore, broken into long runs by the along-shore noise.
        qf = np.clip(d + 2.5 * md + 256, 0, 511).astype(np.intp)
        foam = surf[qf] * _smoothstep(-0.5, 0.8, md + 0.3 * sm + 0.15 * fi)
        sea = sea_lut.T[:, qi] * (1 + 0.04 * md + 0.025 * sm)
        sea += (np.array([230, 235, 232], _F)[:, None] - sea) * (0.75 * foam)
        wet = 0.78 + 0.22 * _smoothstep(0, 10, dist)
        sand_c = np.array([214, 201, 172], _F)[:, None] * (
            wet[qi] * (1 + 0.04 * small2.ravel()[sel] + 0.035 * fi)
        )
        sand_w = (1 - _smoothstep(lay.beach - 5, lay.beach + 5, dist))[qs]
        sand_w[(sand_w > 0.2) & (sand_w < 0.8) & (fi > 0.6)] *= 0.3  # dune grass tufts
        edge = _smoothstep(-1.5, 1.5, dist)[qi]
        label = np.ascontiguousarray(label)
        flat = rgb.reshape(3, -1)  # a view: rgb is freshly allocated, C-contiguous
        px = flat[:, sel]
        px += (sand_c - px) * sand_w
        px += (sea - px) * (1 - edge)
        flat[:, sel] = px
        lab = label.reshape(-1)
        lab[sel[sand_w > 0.5]] = _SAND
        lab[sel[d < 0]] = _WATER

    # Paved surfaces drawn as code images with PIL: sidewalks, verges, driveways, asphalt.
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    marks = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(marks)

    def line(road: _Road, width: float, fill: int) -> None:
        draw.line(_xy(road.pts), fill=fill, width=max(1, int(round(width))))

    for road in lay.roads:
        if road.sidewalk:
            line(road, road.width + 14, _CONCRETE)
    for road in lay.roads:
        if road.sidewalk:
            line(road, road.width + 8, 0)
    for rect, code in lay.paved:
        draw.polygon(rect.corners(), fill=code)
    for pool in lay.pools:
        deck = _Rect(pool.cx, pool.cy, pool.theta, pool.a + 3, pool.b + 3)
        draw.polygon(deck.corners(), fill=_CONCRETE)
        draw.polygon(pool.corners(), fill=_POOL)
    for road in lay.roads:
        line(road, road.width, road.surface)
    for road in lay.roads:
        if road.main:
            length = _polyline_length(road.pts)
            s = np.arange(0, length, 9.0)
            p, _ = _polyline_frames(road.pts, s)
            for k in range(0, len(p) - 1, 2):
                mdraw.line([tuple(p[k]), tuple(p[k + 1])], fill=2, width=1)
    for a, b in lay.stripes:
        mdraw.line([a, b], fill=1, width=1)
    paved = np.asarray(img).copy()
    if lay.shore_d is not None:
        paved[lay.shore_d < lay.beach * 0.4] = 0
    mk = np.asarray(marks)

    lut = np.zeros((256, 3), _F)
    greys = rng.uniform(86, 124, _N_ASPHALT)
    for i, g in enumerate(greys):
        lut[_ASPHALT0 + i] = (g, g * 1.005, g * 1.02)
    lut[_CONCRETE] = rng.uniform(165, 190) * np.array([1.0, 0.99, 0.955])
    lut[_GRAVEL] = (158, 144, 120)
    lut[_POOL] = (72, 172, 192)
    lut[_BARE] = (156, 128, 98)
    has = paved > 0
    codes = paved[has]
    tex = (1 + 0.06 * fine + 0.05 * small + 0.03 * med)[has]
    pool_px = codes == _POOL
    bare_px = codes == _BARE
    if pool_px.any():
        tex[pool_px] = 1 + 0.03 * fine[has][pool_px]
    if bare_px.any():
        tex[bare_px] = 1 + 0.1 * small2[has][bare_px] + 0.05 * fine[has][bare_px]
    tex[(med[has] > 1.3) & (codes < _CONCRETE)] *= 0.88  # patched asphalt
    rgb[:, has] = lut.T[:, codes] * tex
    road_label = np.full(codes.shape, _ROAD, np.uint8)
    road_label[pool_px] = _WATER
    road_label[bare_px] = _SOIL
    label[has] = road_label
    paint = (mk > 0) & (paved > 0) & (paved < _CONCRETE)
    for code, colour, a in ((1, (225, 225, 220), 0.6), (2, (205, 180, 90), 0.5)):
        m = paint & (mk == code)
        rgb[:, m] = rgb[:, m] * _F(1 - a) + np.array(colour, _F)[:, None] * _F(a)

    # Building footprints: the label, computed from the same polygons we publish.
    mask = np.zeros((size, size), np.uint8)
    cache = []
    for h in lay.houses:
        got = _house_mask(h, size)
        if got is not None and got[1].any():
            sl, inside, u, v = got
            mask[sl][inside] = 1
            cache.append((sl, inside, u, v, _roof_geometry(h, u, v)))
        else:
            cache.append(None)
    roof_tex = 1 + 0.045 * fine + 0.035 * small + 0.03 * med
    leaf = 1 + 0.22 * fine + 0.12 * small
    crown = 0.18 * small + 0.1 * fine
    strip = fine + 0.6 * small
    grain = rng.integers(-3, 4, (size, size), dtype=np.int8).astype(_F)
    return _Base(
        rgb, label, mask, fine, small, med, large, paved, roof_tex, leaf, crown, strip, grain, cache
    )


def _blend(rgb: np.ndarray, colour: tuple, weight: np.ndarray) -> None:
    """rgb <- rgb + (colour - rgb) * weight, in place, channel plane by channel plane."""
    for ch in range(3):
        rgb[ch] += (_F(colour[ch]) - rgb[ch]) * weight


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


def _assign_damage(lay: _Layout, rng: np.random.Generator, flood: np.ndarray | None) -> list[str]:
    """Damage class per building: spatially coherent (storm swath, surge near the shore),
    with scene-level shares where no-damage dominates, then minor, major, destroyed."""
    n = len(lay.houses)
    if n == 0:
        return []
    s = lay.severity
    shares = np.array(
        [0.02 + 0.26 * s * s, 0.03 + 0.14 * s, 0.07 + 0.2 * s]
    )  # destroyed, major, minor
    coarse = 8  # the swath is smooth: draw it on a coarse grid and sample that
    swath = _noise(rng, lay.size // coarse + 1, 220 / coarse)
    score = np.empty(n)
    for i, h in enumerate(lay.houses):
        xi = int(np.clip(h.cx, 0, lay.size - 1))
        yi = int(np.clip(h.cy, 0, lay.size - 1))
        z = swath[yi // coarse, xi // coarse] + rng.normal(0, 0.7)
        if lay.shore_d is not None:
            z += 1.5 * math.exp(-max(float(lay.shore_d[yi, xi]) - lay.beach, 0) / 120)
        if flood is not None and flood[yi, xi]:
            z += 0.8
        if h.kind == "outbuilding":
            z += 0.4
        score[i] = z
    order = np.argsort(-score, kind="stable")
    cut = np.cumsum(shares) * n + rng.uniform(-0.5, 0.5, 3)
    classes = ["no-damage"] * n
    names = (DAMAGE_CLASSES[3], DAMAGE_CLASSES[2], DAMAGE_CLASSES[1])
    for rank, i in enumerate(order):
        for k, c in enumerate(cut):
            if rank < c:
                classes[i] = names[k]
                break
    return classes


def _roof_geometry(h: _House, u: np.ndarray, v: np.ndarray) -> tuple:
    """Per-pixel roof height above the eaves, face index, eave-parallel coordinate, distance to
    the outline and ridge lines. Phase-independent, so computed once per location.

    Faces: 0/1 slope down towards -v/+v, 2/3 towards -u/+u (+4 per extra wing). The union of
    an L's two wings takes the higher roof per pixel, which draws the valleys."""
    p = h.pitch
    for k, (cu, cv, a, b) in enumerate(h.sections):
        du, dv = u - _F(cu), v - _F(cv)
        eu, ev = a - np.abs(du), b - np.abs(dv)
        inner_k = np.minimum(eu, ev)  # distance to this wing's outline (>= 0 inside)
        rl = None
        if h.roof == "flat":
            hz = np.zeros(u.shape, _F)
            face = np.zeros(u.shape, np.uint8)
            al = du
        elif h.roof == "hip":
            end = eu < ev  # nearer a short end: a triangular hip face
            hz = p * inner_k
            face = np.where(end, (du >= 0) + 2, dv >= 0).astype(np.uint8)
            al = np.where(end, dv, du)
            rl = np.abs(eu - ev) < 0.6
        elif a >= b:  # gable, ridge along u
            hz = p * ev
            face = (dv >= 0).astype(np.uint8)
            al = du
            rl = np.abs(dv) < 0.7
        else:  # gable, ridge along v
            hz = p * eu
            face = (du >= 0).astype(np.uint8) + 2
            al = dv
            rl = np.abs(du) < 0.7
        if len(h.sections) == 1:
            return hz, face, al, inner_k, rl
        sec = (eu >= 0) & (ev >= 0)
        if k == 0:
            z = np.where(sec, hz, -1.0)
            faces, along, inner = face, al, np.where(sec, inner_k, -1.0)
            ridge = None if rl is None else rl & sec
        else:
            win = sec & (hz > z)
            z = np.where(win, hz, z)
            faces = np.where(win, face + 4 * k, faces).astype(np.uint8)
            along = np.where(win, al, along)
            inner = np.maximum(inner, np.where(sec, inner_k, -1.0))
            if rl is not None:
                ridge = np.where(win, rl, ridge)
    return z.astype(_F), faces, along, inner, ridge


def _paint_roof(
    rgb: np.ndarray,
    top: np.ndarray,
    kind: np.ndarray,
    base: _Base,
    h: _House,
    cache: tuple,
    sun: np.ndarray,
    damage: str | None,
    rng: np.random.Generator | None,
) -> None:
    """Roof faces shaded by one sun (gable: two faces, hip: four), texture and post damage.

    Every face is planar, so its brightness is one number from a small table indexed by face."""
    sl, inside, u, v, (z, faces, along, inner, ridge) = cache
    p = h.pitch
    c, s = math.cos(h.theta), math.sin(h.theta)
    table = []
    for _ in h.sections:
        for fu, fv in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            if h.roof == "flat":
                nx, ny = 0.0, 0.0
            else:
                nx, ny = p * (fu * c - fv * s), p * (fu * s + fv * c)
            lam = (nx * sun[0] + ny * sun[1] + sun[2]) / math.sqrt(nx * nx + ny * ny + 1)
            table.append((0.32 + 0.68 * max(lam, 0.0)) / (0.32 + 0.68 * float(sun[2])))
    shade = np.asarray(table, _F)[faces] * base.roof_tex[sl]
    if h.material == "metal":
        shade += 0.05 * np.sin(along * _F(2 * math.pi / 2.6))
    elif h.material == "tile":
        shade += 0.07 * np.sin(along * _F(2 * math.pi / 3.2))
    if ridge is not None:
        shade[ridge] *= 1.07
    height = h.wall + z
    if h.roof == "flat":
        shade[inner < 2.5] *= 0.8  # parapet
    else:
        shade[inner < 1.0] *= 0.9  # eaves and gutters
    col = np.asarray(h.colour, _F) * shade[..., None]
    for what, cu, cv, a, b in h.extras:
        box = (np.abs(u - cu) <= a) & (np.abs(v - cv) <= b) & inside
        if not box.any():
            continue
        fine = base.fine[sl][box]
        if what == "solar":
            # Dark cells with a light frame grid; they follow the roof plane.
            grid = (np.abs((u[box] - cu) % 3.3 - 1.65) > 1.3) | (
                np.abs((v[box] - cv) % 2.2 - 1.1) > 0.85
            )
            cell = np.where(grid[:, None], (92, 98, 112), (34, 42, 62)).astype(_F)
            col[box] = cell * (np.asarray(table, _F)[faces[box]] * (1 + 0.02 * fine))[:, None]
            continue
        tone = (
            (200, 200, 196)
            if what == "unit"
            else (128, 84, 70)
            if (cu * 7) % 2 < 1
            else (118, 116, 112)
        )
        col[box] = np.array(tone, _F) * (1 + 0.03 * fine)[:, None]
        height = np.where(box, height + (3.0 if what == "unit" else 4.0), height)

    if damage is not None and damage != "no-damage" and rng is not None:
        col, height = _damage_roof(
            col, height, inside, u, v, along, shade, h, damage, base, sl, rng
        )

    cur = top[sl]
    win = inside & (height > cur)
    rgb[(slice(None), *sl)][:, win] = col[win].T
    cur[win] = height[win]
    kind[sl][win] = 1


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


def _damage_roof(
    col: np.ndarray,
    height: np.ndarray,
    inside: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    along: np.ndarray,
    shade: np.ndarray,
    h: _House,
    damage: str,
    base: _Base,
    sl: _Slices,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Post-storm roof: missing shingles, blue tarps, open rafters, or a rubble pile."""
    fine, small, med = base.fine[sl], base.small[sl], base.med[sl]
    umin, vmin = min(p[0] for p in h.outline), min(p[1] for p in h.outline)
    umax, vmax = max(p[0] for p in h.outline), max(p[1] for p in h.outline)
    tarp_c = np.array(
        rng.choice([(40, 96, 182), (52, 112, 190), (30, 80, 160), (70, 120, 170)]), _F
    )

    def patches(k: int, lo: float, hi: float) -> np.ndarray:
        m = np.zeros(u.shape, bool)
        for _ in range(k):
            pu, pv = rng.uniform(umin, umax), rng.uniform(vmin, vmax)
            m |= (np.abs(u - pu) <= rng.uniform(lo, hi)) & (np.abs(v - pv) <= rng.uniform(lo, hi))
        return m & inside

    def tarp(frac: float) -> np.ndarray:
        cu, cv, a, b = h.sections[int(rng.integers(len(h.sections)))]
        side = rng.choice([-1, 1])
        lo = rng.uniform(-a, a * (1 - 2 * frac))
        if a >= b:
            m = (
                (u - cu >= lo)
                & (u - cu <= lo + 2 * a * frac)
                & ((v - cv) * side >= 0)
                & ((v - cv) * side <= b * 0.92)
            )
        else:
            m = (
                (v - cv >= lo * b / a)
                & (v - cv <= (lo + 2 * a * frac) * b / a)
                & ((u - cu) * side >= 0)
                & ((u - cu) * side <= a * 0.92)
            )
        return m & inside

    if damage == "minor-damage":
        miss = patches(int(rng.integers(2, 7)), 1.0, 3.0)
        under = np.array(rng.choice([(60, 54, 48), (188, 162, 122)]), _F)
        col[miss] = under * shade[miss][:, None]
        if rng.random() < 0.5:
            t = tarp(rng.uniform(0.25, 0.6))
            col[t] = tarp_c * shade[t][:, None] * (1 + 0.05 * fine[t])[:, None]
            rim = t & ~_erode(t, 1)
            col[rim] *= 0.7
    elif damage == "major-damage":
        blob = (0.6 * med + 0.4 * small + rng.normal(0, 0.3)) > rng.uniform(-0.6, 0.3)
        box = patches(int(rng.integers(1, 3)), 5.0, 12.0)
        miss = inside & blob & box | patches(int(rng.integers(3, 8)), 1.0, 3.5)
        rafters = np.abs(((along / 3.0) % 1.0) - 0.5) < 0.17
        dark = np.array([52, 46, 40], _F) * (1 + 0.2 * small[miss])[:, None]
        wood = np.array([172, 142, 104], _F) * shade[miss][:, None]
        col[miss] = np.where(rafters[miss][:, None], wood, dark)
        height = np.where(miss, height - 2.0, height)
        if rng.random() < 0.45:
            t = tarp(rng.uniform(0.3, 0.8)) & ~miss
            col[t] = tarp_c * shade[t][:, None] * (1 + 0.05 * fine[t])[:, None]
    elif damage == "destroyed":
        if rng.random() < 0.7:
            # Rubble pile: a jumble of timber, roofing and drywall with no roof faces left.
            mix = 0.9 * small + 0.5 * med + 0.45 * fine + rng.normal(0, 0.3)
            pick = np.clip(((mix + 2.2) * 2.0).astype(int), 0, len(_RUBBLE) - 1)
            rub = _RUBBLE[pick] * (0.9 + 0.08 * fine)[..., None]
            rub[fine < -1.5] *= 0.5  # voids between pieces
            pile = 2.0 + 1.5 * np.clip(med + 0.5 * small, -1, 2)
            roof_c = np.array(h.colour, _F)
            for _ in range(int(rng.integers(1, 5))):
                # Collapsed roof panels: large tilted slabs of the old roof on the pile.
                fu, fv = rng.uniform(umin, umax) * 0.6, rng.uniform(vmin, vmax) * 0.6
                fa = rng.uniform(0.15, 0.4) * (umax - umin)
                fb = rng.uniform(0.15, 0.4) * (vmax - vmin)
                ang = rng.uniform(-0.7, 0.7)
                ca, sa = math.cos(ang), math.sin(ang)
                pu, pv = (u - fu) * ca + (v - fv) * sa, (v - fv) * ca - (u - fu) * sa
                frag = (np.abs(pu) <= fa) & (np.abs(pv) <= fb) & (small > -1.2)
                tilt = rng.uniform(0.6, 1.2)
                rub[frag] = roof_c * tilt * (1 + 0.05 * fine[frag] + 0.03 * small[frag])[:, None]
                pile = np.where(frag, pile + 1.0, pile)
            col[inside] = rub[inside]
            height = np.where(inside, pile, height)
        else:
            # Wiped to the slab: a concrete foundation with a little debris.
            slab = np.array([182, 178, 168], _F) * (1 + 0.04 * fine + 0.05 * small)[..., None]
            bits = (fine > 1.3) & inside
            slab[bits] = _DEBRIS[(np.abs(small[bits]) * 5).astype(int) % len(_DEBRIS)]
            col[inside] = slab[inside]
            height = np.where(inside, 0.6, height)
    return col, height


def _tree_sprite(kind: str, r: float, variant: int, sun: np.ndarray) -> tuple:
    """Canopy template for one species, radius and sun: normalised radius, sunlit shading and
    dome profile. Cached per render, so each tree costs a handful of array operations."""
    half = int(math.ceil(r * 1.3)) + 1
    d = np.arange(-half, half + 1, dtype=_F)
    dx, dy = d[None, :], d[:, None]
    rr = np.sqrt(dx * dx + dy * dy) / _F(r)
    if kind == "palm":
        ang = np.arctan2(dy, dx)
        frond = np.abs(np.cos(ang * 4.5 + variant * 0.7)) ** 3
        rr = rr / (0.35 + 0.75 * frond)  # star-shaped crown: fronds reach out, gaps between
    nz = np.clip(1 - rr * rr, 0.03, 1)
    nx, ny = dx / _F(r) * 0.9, dy / _F(r) * 0.9
    lam = (nx * sun[0] + ny * sun[1] + np.sqrt(nz) * sun[2]) / np.sqrt(nx * nx + ny * ny + nz)
    shade = (0.3 + 0.85 * np.clip(lam, 0, 1)).astype(_F)
    profile = (0.4 * r * (np.sqrt(nz) - 1)).astype(_F)
    return half, rr.astype(_F), shade, profile


def _paint_tree(
    rgb: np.ndarray,
    top: np.ndarray,
    kind: np.ndarray,
    base: _Base,
    t: _Tree,
    sun: np.ndarray,
    size: int,
    post: float,
    sprites: dict,
) -> None:
    """Canopy as a textured dome lit by the sun; palms as star-shaped crowns.

    ``post`` in 0..1 strips and browns the canopy (hurricane defoliation)."""
    r = t.r * (1 - 0.25 * post)
    key = (t.kind, round(r * 2) / 2, int(t.x) % 4 if t.kind == "palm" else 0)
    if key not in sprites:
        sprites[key] = _tree_sprite(key[0], key[1], key[2], sun)
    half, rr, shade0, profile = sprites[key]
    cx, cy = int(round(t.x)), int(round(t.y))
    y0, y1 = max(0, cy - half), min(size, cy + half + 1)
    x0, x1 = max(0, cx - half), min(size, cx + half + 1)
    if y0 >= y1 or x0 >= x1:
        return
    sl = (slice(y0, y1), slice(x0, x1))
    tl = (slice(y0 - cy + half, y1 - cy + half), slice(x0 - cx + half, x1 - cx + half))
    inside = rr[tl] < 1 + base.crown[sl]
    if post > 0:
        inside &= base.strip[sl] > -1.8 + 2.6 * post
    height = profile[tl] + _F(t.h)
    cur = top[sl]
    win = inside & (height > cur)
    if not win.any():
        return
    tone = np.array(t.tone, _F)
    if post > 0:
        tone = tone + (np.array([112, 100, 78], _F) - tone) * _F(0.55 * post)
    shade = shade0[tl][win] * base.leaf[sl][win]
    rgb[(slice(None), *sl)][:, win] = tone[:, None] * shade
    cur[win] = height[win]
    kind[sl][win] = 2


def _paint_car(rgb: np.ndarray, top: np.ndarray, rect: _Rect, colour: tuple, size: int) -> None:
    """A car: a painted box with a darker windscreen/rear-window band, 1.5 m tall."""
    loc = _local(rect.cx, rect.cy, rect.theta, math.hypot(rect.a, rect.b) + 1, size)
    if loc is None:
        return
    sl, u, v = loc
    inside = (np.abs(u) <= rect.a) & (np.abs(v) <= rect.b)
    along = np.abs(u if rect.a >= rect.b else v) / max(rect.a, rect.b)
    glass = (along < 0.55) & (along > 0.25)
    cur = top[sl]
    win = inside & (cur < 3.0)
    tone = np.where(glass[win], 0.35, 1.0).astype(_F)
    rgb[(slice(None), *sl)][:, win] = np.array(colour, _F)[:, None] * tone + 15 * (1 - tone)
    cur[win] = 3.0


def _render(lay: _Layout, base: _Base, phase: str) -> tuple[np.ndarray, list[str | None], dict]:
    """Paint one phase onto the shared ground and return (image, damage per building, meta)."""
    size = lay.size
    post = phase == "post"
    rng = np.random.default_rng(lay.post_seed if post else lay.pre_seed)
    az, el = lay.sun_post if post else lay.sun_pre
    sun = _sun_vector(az, el)
    rgb = base.rgb.copy()
    label = base.label.copy()
    top = np.zeros((size, size), _F)
    kind = np.zeros((size, size), np.uint8)

    for rect, colour in lay.cars:
        _paint_car(rgb, top, rect, colour, size)

    flood = None
    wrack = None
    flooded_fraction = 0.0
    if post:
        # Storm-burnt lawns, sand washed inland, then flood water over low ground. Each is one
        # blend of the whole image towards a colour, weighted per pixel.
        brown = (label == _GRASS) * _F(0.12 + 0.18 * lay.severity)
        _blend(rgb, (142, 132, 96), brown)
        if lay.shore_d is not None:
            reach = lay.shore_d - lay.beach + 30 * base.large + 14 * base.med + 2 * base.small
            over = _smoothstep(-10, 10, 20 + 110 * lay.severity - reach) * (lay.shore_d > 0)
            over *= _smoothstep(-0.9, 0.6, base.med + 0.6 * base.large + 0.15 * base.small) * _F(
                0.8
            )
            _blend(rgb, (206, 192, 160), over)
        if lay.disaster_type == "flooding":
            elev = base.large * 0.6 + base.large.T[::-1, :] * 0.5
            elev += base.med * 0.15
            if lay.shore_d is not None:
                elev += np.clip(lay.shore_d, 0, 400) * _F(1 / 250)
            land = label != _WATER
            sub = elev[::4, ::4][land[::4, ::4]]
            thr = float(np.quantile(sub, lay.flood_target)) if sub.size else -9.0
            depth = _F(thr) - elev
            flood = (depth > 0) & land
            murk = np.array(
                rng.choice([(124, 108, 80), (108, 100, 72), (132, 116, 88), (96, 88, 70)]), _F
            )
            sheen = 1 + 0.04 * base.large + 0.03 * base.med
            alpha = np.clip(0.3 + depth * 2.5, 0, 0.93) * (flood & (top < 4.0))  # cars go under
            for ch in range(3):
                rgb[ch] += (murk[ch] * sheen - rgb[ch]) * alpha
            flooded_fraction = float(flood.mean())
            wrack = (depth < 0) & (depth > -0.04) & land  # debris line at the high-water mark
    classes: list[str | None] = [None] * len(lay.houses)
    if post:
        classes = _assign_damage(lay, rng, flood)

    for i, h in enumerate(lay.houses):
        cache = base.houses[i]
        if cache is not None:
            _paint_roof(rgb, top, kind, base, h, cache, sun, classes[i], rng if post else None)
    if post:
        _ground_debris(rgb, top, label, lay, base, classes, wrack, rng)
    strip = 0.35 + 0.6 * lay.severity if post else 0.0
    sprites: dict = {}
    for t in lay.trees:
        _paint_tree(rgb, top, kind, base, t, sun, size, strip, sprites)

    # Shadows from everything standing, softened into a penumbra, tinted by blue skylight;
    # then acquisition: haze, white balance, exposure, sensor noise, optics blur. Folded into
    # as few whole-image operations as possible (they dominate the cost).
    shadow = Image.fromarray(_cast_shadow(top, az, el).astype(np.uint8) * 255)
    shadow = np.asarray(shadow.filter(ImageFilter.BoxBlur(1)), dtype=_F) * _F(1 / 255)
    amb = np.array([0.40, 0.44, 0.54], _F)
    haze = _F(rng.uniform(0.02, 0.09))
    gain = (rng.normal(1.0, 0.02, 3) * rng.uniform(0.93, 1.06)).astype(_F) * (1 - haze)
    for ch in range(3):
        rgb[ch] *= shadow * _F(-(1 - amb[ch]) * gain[ch]) + gain[ch]
    grain = base.grain[::-1] if post else base.grain  # a different noise frame per phase
    for ch, sky in enumerate((175, 185, 200)):
        rgb[ch] += grain + _F(sky * haze)
    np.clip(rgb, 0, 255, out=rgb)
    planes = [Image.fromarray(rgb[ch].astype(np.uint8)) for ch in range(3)]
    image = np.asarray(Image.merge("RGB", planes).filter(_BLUR))

    # Land cover as seen from above (buildings by footprint, then canopy, then ground).
    code = np.where(base.mask > 0, 6, np.where(kind == 2, 5, label))
    frac = np.bincount(code.ravel(), minlength=7) / float(size * size)
    meta = {
        "land_grass": float(frac[_GRASS]),
        "land_soil": float(frac[_SOIL]),
        "land_sand": float(frac[_SAND]),
        "land_water": float(frac[_WATER]),
        "land_road": float(frac[_ROAD]),
        "land_tree": float(frac[5]),
        "land_building": float(frac[6]),
        "flooded_fraction": round(flooded_fraction, 4),
        "sun_azimuth": round(az, 2),
        "sun_elevation": round(el, 2),
    }
    return image, classes, meta


def _ground_debris(
    rgb: np.ndarray,
    top: np.ndarray,
    label: np.ndarray,
    lay: _Layout,
    base: _Base,
    classes: list[str | None],
    wrack: np.ndarray | None,
    rng: np.random.Generator,
) -> None:
    """Scattered debris: dense around damaged buildings, blown downwind, plus the wrack line."""
    size = lay.size
    small_n = max(8, size // 8)
    dens = np.zeros((small_n, small_n), _F)
    weight = {"minor-damage": 0.4, "major-damage": 1.2, "destroyed": 2.5}
    scale = small_n / size
    for h, c in zip(lay.houses, classes, strict=True):
        if c in weight:
            x = int(np.clip((h.cx + math.cos(lay.wind) * 12) * scale, 0, small_n - 1))
            y = int(np.clip((h.cy + math.sin(lay.wind) * 12) * scale, 0, small_n - 1))
            dens[y, x] += weight[c]
    dens = ndimage.gaussian_filter(dens, 2.5) * 6
    dens = np.asarray(Image.fromarray(dens).resize((size, size), Image.Resampling.BILINEAR))
    dens = dens + 0.05 * lay.severity
    hf = base.fine[::-1, ::-1]
    speck = (hf > 3.0 - np.clip(dens, 0, 1.5)) & (top < 1.0) & (label != _WATER)
    if wrack is not None:
        speck |= wrack & (base.fine > 0.5)
    if speck.any():
        idx = ((np.abs(base.small[speck]) * 7 + np.abs(hf[speck]) * 3).astype(int)) % len(_DEBRIS)
        rgb[:, speck] = _DEBRIS[idx].T * (0.85 + 0.1 * hf[speck])
    # Loose planks and sheets: short bright strokes where debris is dense.
    n = int(dens.mean() * size * size / 900)
    if n > 0:
        xs = rng.uniform(0, size, n)
        ys = rng.uniform(0, size, n)
        keep = rng.random(n) < np.clip(dens[ys.astype(int), xs.astype(int)] / 1.5, 0, 1)
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for x, y in zip(xs[keep], ys[keep], strict=True):
            a = rng.uniform(0, math.pi)
            ln = rng.uniform(2, 6)
            draw.line(
                [(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))],
                fill=int(rng.integers(1, 8)),
                width=int(rng.integers(1, 3)),
            )
        planks = np.asarray(img)
        m = (planks > 0) & (top < 1.0) & (label != _WATER)
        rgb[:, m] = _DEBRIS[planks[m]].T


# --------------------------------------------------------------------------------------------
# Public API


def _check(seed: int, index: int, size: int) -> None:
    for name, value, low in (("seed", seed, 0), ("index", index, 0), ("size", size, MIN_SIZE)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(
                f"The '{name}' parameter must be an integer >= {low}. Got {value!r} instead."
            )


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(
            f"The 'phase' parameter must be one of {sorted(PHASES)}. Got {phase!r} instead."
        )


def _scene(lay: _Layout, base: _Base, seed: int, index: int, phase: str) -> Scene:
    image, classes, meta = _render(lay, base, phase)
    group = f"synthetic-{seed}_{index:05d}"
    buildings = [
        Building(uid=f"{group}-b{j:04d}", polygon=h.polygon(), damage=classes[j])
        for j, h in enumerate(lay.houses)
    ]
    area_km2 = (lay.size * GSD_M / 1000.0) ** 2
    full = {
        "disaster": DISASTER,
        "disaster_type": lay.disaster_type,
        "phase": phase,
        "gsd": GSD_M,
        "sun_azimuth": meta.pop("sun_azimuth"),
        "sun_elevation": meta.pop("sun_elevation"),
        "density": round(len(lay.houses) / area_km2, 1),
        "settlement": lay.settlement,
        "shoreline": lay.shoreline,
        "n_buildings": len(lay.houses),
        **meta,
    }
    return Scene(
        scene_id=f"{group}_{phase}",
        source=SOURCE,
        image=image,
        mask=base.mask.copy(),
        buildings=buildings,
        meta=full,
        group=group,
    )


def generate_pair(seed: int, index: int, size: int = 1024) -> tuple[Scene, Scene]:
    """Pre- and post-disaster scene of one location (same layout; post has storm damage).

    The layout and ground texture are built once and shared, so this costs less than two
    ``generate_scene`` calls and gives identical results to them."""
    _check(seed, index, size)
    lay = _layout(int(seed), int(index), int(size))
    base = _base(lay)
    return _scene(lay, base, int(seed), int(index), "pre"), _scene(
        lay, base, int(seed), int(index), "post"
    )


def generate_scene(seed: int, index: int, size: int = 1024, phase: str = "pre") -> Scene:
    """One phase of one location; byte-identical to the matching half of ``generate_pair``.

    ``meta['density']`` is buildings per km² (the ground is 0.5 m/pixel whatever ``size``)."""
    _check_phase(phase)
    _check(seed, index, size)
    lay = _layout(int(seed), int(index), int(size))
    return _scene(lay, _base(lay), int(seed), int(index), phase)


def iter_synthetic(
    n_locations: int, seed: int = 0, size: int = 1024, phases: tuple[str, ...] = ("pre", "post")
) -> Iterator[Scene]:
    """Scenes of locations 0..n_locations-1, lazily, each location's phases in the given order."""
    if (
        isinstance(n_locations, bool)
        or not isinstance(n_locations, (int, np.integer))
        or n_locations < 0
    ):
        raise ValueError(
            f"The 'n_locations' parameter must be an integer >= 0. Got {n_locations!r} instead."
        )
    for phase in phases:
        _check_phase(phase)
    _check(seed, 0, size)
    for index in range(int(n_locations)):
        if len(set(phases)) > 1:
            pair = dict(zip(PHASES, generate_pair(seed, index, size), strict=True))
            for phase in phases:
                yield pair[phase]
        else:
            for phase in phases:
                yield generate_scene(seed, index, size, phase)
