"""The ground, textured once per location: grass and soil, lawns, crop fields, the shore and
paved surfaces, plus the building-footprint mask (the label)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from app.data.synthetic.buildings import _roof_geometry
from app.data.synthetic.geometry import (
    _Base,
    _house_mask,
    _Layout,
    _local,
    _noise,
    _polyline_frames,
    _polyline_length,
    _Rect,
    _rect_mask,
    _Road,
    _smoothstep,
    _xy,
)
from app.data.synthetic.palette import (
    _ASPHALT0,
    _BARE,
    _CONCRETE,
    _F,
    _GRASS,
    _GRAVEL,
    _N_ASPHALT,
    _POOL,
    _ROAD,
    _SAND,
    _SOIL,
    _WATER,
)


@dataclass(frozen=True)
class _Fields:
    """The ground's value-noise fields (unit std) by feature size, plus two flipped copies
    that look independent for free (no seams, unlike np.roll, whose wrap-around edge shows as
    a straight line in smooth noise)."""

    fine: np.ndarray  # ~1.3 px
    small: np.ndarray  # ~5 px
    med: np.ndarray  # ~22 px
    large: np.ndarray  # ~90 px
    huge: np.ndarray  # ~260 px
    med2: np.ndarray
    small2: np.ndarray


def _base(lay: _Layout) -> _Base:
    """Texture the ground once per location; both phases paint on copies of it.

    The steps draw from the texture generator in a fixed order (noise fields, lawn tints,
    asphalt and concrete tones, sensor grain); keep it when editing."""
    size = lay.size
    rng = np.random.default_rng(lay.tex_seed)
    f = _noise_fields(rng, size)
    rgb, label = _natural_ground(lay, f)
    if lay.lots:
        _lawns(rng, lay, rgb)
    if lay.fields:
        _crop_fields(lay, f, rgb, label)
    if lay.shore_d is not None:
        label = _shore(lay, f, rgb, label)
    paved = _paved_surfaces(rng, lay, f, rgb, label)
    mask, cache = _footprints(lay)
    fine, small, med = f.fine, f.small, f.med
    roof_tex = 1 + 0.045 * fine + 0.035 * small + 0.03 * med
    leaf = 1 + 0.22 * fine + 0.12 * small
    crown = 0.18 * small + 0.1 * fine
    strip = fine + 0.6 * small
    grain = rng.integers(-3, 4, (size, size), dtype=np.int8).astype(_F)
    return _Base(
        rgb,
        label,
        mask,
        fine,
        small,
        med,
        f.large,
        paved,
        roof_tex,
        leaf,
        crown,
        strip,
        grain,
        cache,
    )


def _shore_line(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """Signed distance to a wobbly water line (px, water < 0) and the inland direction
    (radians). The line is put so that 8..35 % of the scene is sea."""
    ang = rng.uniform(0, 2 * math.pi)
    nx, ny = math.cos(ang), math.sin(ang)  # points inland
    coords = np.arange(size, dtype=_F) - _F(size / 2)
    proj = coords[None, :] * _F(nx) + coords[:, None] * _F(ny)
    level = float(np.quantile(proj[::8, ::8], rng.uniform(0.08, 0.35)))
    wobble = _noise(rng, size, 160) * _F(rng.uniform(10, 40)) + _noise(rng, size, 40) * _F(4)
    return (proj - _F(level) + wobble).astype(_F), ang


def _noise_fields(rng: np.random.Generator, size: int) -> _Fields:
    fine = _noise(rng, size, 1.3)
    small = _noise(rng, size, 5)
    med = _noise(rng, size, 22)
    large = _noise(rng, size, 90)
    huge = _noise(rng, size, 260)
    med2 = np.ascontiguousarray(med[:, ::-1])
    small2 = np.ascontiguousarray(small[::-1, :])
    return _Fields(fine, small, med, large, huge, med2, small2)


def _natural_ground(lay: _Layout, f: _Fields) -> tuple[np.ndarray, np.ndarray]:
    """Grass from lush to dry with patches of bare soil: planar colour and ground label.

    Per channel: dry * X + (lush - dry) * Y + soil * Z with three shared scalar fields."""
    size = lay.size
    fine, small, med, large, huge, med2, small2 = (
        f.fine,
        f.small,
        f.med,
        f.large,
        f.huge,
        f.med2,
        f.small2,
    )
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
    return rgb, label


def _lawns(rng: np.random.Generator, lay: _Layout, rgb: np.ndarray) -> None:
    """Suburban lawns: each lot mowed and watered a little differently."""
    size = lay.size
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


def _crop_fields(lay: _Layout, f: _Fields, rgb: np.ndarray, label: np.ndarray) -> None:
    """Rural crop parcels with row stripes."""
    size, med, small = lay.size, f.med, f.small
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


def _shore(lay: _Layout, f: _Fields, rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Sea, surf, wet sand, beach and dune grass; returns the (contiguous) ground label.

    Shore colours are functions of the (noise-jittered) distance to the water line, so they
    are looked up in 1-D tables: sea deepening offshore, surf bands, wet sand, beach, and the
    irregular inland edge of the beach. Only pixels near or in the sea are touched."""
    small, fine, med, large, small2 = f.small, f.fine, f.med, f.large, f.small2
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
    return label


def _paved_surfaces(
    rng: np.random.Generator, lay: _Layout, f: _Fields, rgb: np.ndarray, label: np.ndarray
) -> np.ndarray:
    """Sidewalks, verges, driveways, pools and asphalt with road markings; returns the paved
    codes. Drawn as code images with PIL, then coloured through a tone table."""
    fine, small, med, small2 = f.fine, f.small, f.med, f.small2
    paved, mk = _paved_codes(lay)
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
    return paved


def _paved_codes(lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Paved-surface codes per pixel (0 = unpaved) and road-marking codes (1 = parking
    stripe, 2 = centre line), drawn with PIL in painter's order."""
    size = lay.size
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
    return paved, mk


def _footprints(lay: _Layout) -> tuple[np.ndarray, list]:
    """The building mask (the label), computed from the same polygons we publish, and per
    house its (slices, inside, u, v, roof geometry), or None when it is off the scene."""
    size = lay.size
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
    return mask, cache
