"""Buildings: footprints and roofs, lots along a road (house, driveway, pool, car, shed), and
painting roofs and cars for one phase."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.data.synthetic.damage import _damage_roof
from app.data.synthetic.geometry import (
    _Base,
    _frame_rect,
    _House,
    _Layout,
    _local,
    _polyline_frames,
    _polyline_length,
    _Rect,
    _Road,
)
from app.data.synthetic.palette import (
    _ASPHALT0,
    _BARE,
    _CAR_COLOURS,
    _CONCRETE,
    _F,
    _FLAT_ROOFS,
    _GRAVEL,
    _N_ASPHALT,
    _ROOF_CUM,
    _ROOF_CUM_SHED,
    _ROOFS,
)
from app.data.synthetic.roads import _Occupancy


def _make_house(
    rng: np.random.Generator, w: float, d: float, kind: str, rho: float
) -> tuple[tuple, tuple, str, float, float, tuple[float, float, float], str, tuple]:
    """Footprint (rectangle or L), roof type, pitch, eave height, colour, material and roof
    fixtures (rooftop units, chimney, solar array)."""
    if kind == "commercial":
        return _commercial_block(rng, w, d)
    sections, outline = _footprint(rng, w, d, kind)
    cum = _ROOF_CUM_SHED if kind == "outbuilding" else _ROOF_CUM
    k = min(int(np.searchsorted(cum, rng.random())), len(_ROOFS) - 1)
    base, material, _ = _ROOFS[k]
    jitter = rng.normal(1.0, 0.05) * rng.normal(1.0, 0.025, 3)
    colour = tuple(min(245.0, max(20.0, float(c * j))) for c, j in zip(base, jitter, strict=True))
    roof = "hip" if rng.random() < (0.45 if material != "metal" else 0.15) else "gable"
    pitch = rng.uniform(0.3, 0.6) if kind == "house" else rng.uniform(0.15, 0.3)
    storeys = 2 if (kind == "house" and rng.random() < 0.15 + 0.3 * rho) else 1
    wall = storeys * rng.uniform(6.0, 7.0) + rng.uniform(0, 2.5)  # some raised on piers
    fixtures = _house_fixtures(rng, sections[0]) if kind == "house" else ()
    return sections, outline, roof, pitch, wall, colour, material, fixtures


def _commercial_block(
    rng: np.random.Generator, w: float, d: float
) -> tuple[tuple, tuple, str, float, float, tuple[float, float, float], str, tuple]:
    """A flat-roofed commercial box with rooftop units (``_make_house``'s record)."""
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


def _footprint(rng: np.random.Generator, w: float, d: float, kind: str) -> tuple[tuple, tuple]:
    """Sections (cu, cv, a, b) and outline of a ``w`` x ``d`` rectangle, or for some larger
    houses an L of two wings, mirrored at random."""
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
    return sections, outline


def _house_fixtures(
    rng: np.random.Generator, main: tuple[float, float, float, float]
) -> tuple[tuple[str, float, float, float, float], ...]:
    """Maybe a chimney and maybe a solar array on the main section ``(cu, cv, a, b)``."""
    cu, cv, a, b = main
    fixtures = []
    if rng.random() < 0.3:
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
    if rng.random() < 0.07 and a > 12:
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
    return tuple(fixtures)


@dataclass
class _Plot:
    """One lot on one side of a road, in the road's frame: u along the road, v away from it.

    ``p`` is the lot's point on the road centre line. The house fields are filled in by
    ``_site_house`` and read by the steps that add a driveway, pool, shed or field behind it."""

    p: np.ndarray
    theta: float  # direction of u (the road's, turned so that +v leads away from the road)
    lot_w: float
    commercial: bool
    rural: bool
    edge: float  # distance from the centre line to the road's outer edge (sidewalk or verge)
    w: float = 0.0  # house width along u and depth along v
    d: float = 0.0
    setback: float = 0.0  # road edge to house front
    c_u: float = 0.0  # house centre
    c_v: float = 0.0
    jitter: float = 0.0  # house angle off the road's


def _place_along(
    rng: np.random.Generator,
    lay: _Layout,
    occ: _Occupancy,
    road: _Road,
    rural: bool,
    coastal: bool,
) -> None:
    """Walk both sides of a road, dropping lots with a house, driveway, maybe a pool and car.

    The steps draw from ``rng`` in a fixed order (lot widths, then per lot: house, driveway,
    pool, shed, field); the scenes depend on that order, so keep it when editing."""
    size = lay.size
    length = _polyline_length(road.pts)
    edge = road.width / 2 + (7 if road.sidewalk else 2)
    for side in (1, -1):
        # Cut the road side into lots first, then get all lot frames in one vectorised call.
        lots = _cut_lots(rng, lay.rho, length, rural, road.main)
        if not lots:
            continue
        ps, ts = _polyline_frames(road.pts, np.array([m for m, _, _ in lots]))
        for (_, lot_w, commercial), p, t in zip(lots, ps, ts, strict=True):
            if not (-30 <= p[0] <= size + 30 and -30 <= p[1] <= size + 30):
                continue
            theta = math.atan2(t[1], t[0]) + (0.0 if side == 1 else math.pi)
            _fill_lot(rng, lay, occ, road, _Plot(p, theta, lot_w, commercial, rural, edge), coastal)


def _cut_lots(
    rng: np.random.Generator, rho: float, length: float, rural: bool, main: bool
) -> list[tuple[float, float, bool]]:
    """(centre arc length, width, commercial) of the consecutive lots along one road side."""
    lots = []
    s = rng.uniform(0, 40)
    while s < length:
        lot_w = rng.uniform(50, 110) if rural else (66 - 24 * rho) * rng.uniform(0.9, 1.12)
        commercial = (not rural) and main and rng.random() < 0.18
        if commercial:
            lot_w = rng.uniform(90, 150)
        lots.append((s + lot_w / 2, lot_w, commercial))
        s += lot_w
    return lots


def _fill_lot(
    rng: np.random.Generator,
    lay: _Layout,
    occ: _Occupancy,
    road: _Road,
    plot: _Plot,
    coastal: bool,
) -> None:
    """One lot: a house with its driveway or parking, then maybe a pool, a shed and a field."""
    house = _site_house(rng, lay, occ, plot)
    if house is None:
        return
    spot = occ.free_house(house, 4.0)
    if spot is None:
        return
    # Driveway (or parking lot) from the front of the house to the road centre line.
    if plot.commercial:
        drive = _parking_lot(rng, lay, occ, plot)
    else:
        drive = _driveway(rng, lay, occ, road, plot)
    if drive is None:
        return
    occ.take(spot)
    occ.take_rect(drive)
    lay.houses.append(house)
    p_in, theta, c_u, edge = plot.p, plot.theta, plot.c_u, plot.edge
    setback, d = plot.setback, plot.d
    if not plot.rural and not plot.commercial:
        lay.lots.append(
            _frame_rect(
                p_in,
                theta,
                c_u,
                edge + 1 + (setback + d + 30) / 2,
                plot.lot_w / 2,
                (setback + d + 30) / 2,
            )
        )
    back = plot.c_v + d / 2
    if not plot.commercial and rng.random() < (0.28 if coastal else 0.1) * (0.4 + lay.rho):
        _add_pool(rng, lay, occ, plot, back)
    if rng.random() < (0.65 if plot.rural else 0.12):
        _add_outbuilding(rng, lay, occ, plot, back)
    if plot.rural and rng.random() < 0.3:
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


def _site_house(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, plot: _Plot
) -> _House | None:
    """Size and place the lot's house; None when the lot stays empty (maybe a bare patch) or
    the house's centre is off the scene or already taken."""
    size, rho, rural, lot_w = lay.size, lay.rho, plot.rural, plot.lot_w
    p_in, theta, edge = plot.p, plot.theta, plot.edge
    if plot.commercial:
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
    if not plot.commercial and rng.random() > fill:
        if not rural and rng.random() < 0.25:
            bare = _frame_rect(p_in, theta, 0, edge + 8 + 20, lot_w / 2 - 4, 22)
            if occ.free_rect(bare):
                lay.paved.append((bare, _BARE))
        return None
    jitter = rng.normal(0, 0.14 if rural else 0.03)
    c_v = edge + setback + d / 2
    c_u = rng.normal(0, 0.06 * lot_w)
    plot.w, plot.d, plot.setback, plot.c_u, plot.c_v, plot.jitter = w, d, setback, c_u, c_v, jitter
    c, sn = math.cos(theta), math.sin(theta)
    hx, hy = p_in[0] + c_u * c - c_v * sn, p_in[1] + c_u * sn + c_v * c
    if not (0 <= hx < size and 0 <= hy < size):
        return None
    if occ.road[int(hy), int(hx)] or occ.build[int(hy), int(hx)]:
        return None  # cheap early reject before building the footprint
    kind = "commercial" if plot.commercial else "house"
    sections, outline, roof, pitch, wall, colour, mat, extras = _make_house(rng, w, d, kind, rho)
    return _House(
        hx, hy, theta + jitter, sections, outline, roof, pitch, wall, colour, mat, kind, extras
    )


def _parking_lot(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, plot: _Plot
) -> _Rect | None:
    """A commercial building's parking lot out to the road: striped bays, some with a car."""
    p_in, theta, edge, setback = plot.p, plot.theta, plot.edge, plot.setback
    c_u, w = plot.c_u, plot.w
    drive = _frame_rect(
        p_in, theta, c_u, (edge + setback) / 2 + 1, w / 2 + 6, (edge + setback) / 2 + 1
    )
    if not occ.free_rect(drive, road_ok=True):
        return None
    lay.paved.append((drive, _ASPHALT0 + int(rng.integers(_N_ASPHALT))))
    c, sn = math.cos(theta), math.sin(theta)
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
    return drive


def _driveway(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, road: _Road, plot: _Plot
) -> _Rect | None:
    """A house's driveway to the road (gravel, concrete or asphalt), maybe a car on it and
    one parked at the kerb."""
    p_in, theta, rural = plot.p, plot.theta, plot.rural
    edge, setback, c_u, w = plot.edge, plot.setback, plot.c_u, plot.w
    dw = rng.uniform(4.5, 6.5) if not rural else rng.uniform(3.5, 5)
    du = c_u + rng.choice([-1, 1]) * (w / 2 - dw - rng.uniform(1, 5))
    length_d = setback + edge - 1
    drive = _frame_rect(p_in, theta, du, length_d / 2, dw, length_d / 2 + 1)
    if not occ.free_rect(drive, road_ok=True):
        return None
    surf = (
        _GRAVEL
        if (rural and rng.random() < 0.6)
        else (_CONCRETE if rng.random() < 0.75 else _ASPHALT0 + int(rng.integers(_N_ASPHALT)))
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
    return drive


def _add_pool(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, plot: _Plot, back: float
) -> None:
    """A backyard pool with its concrete deck, if the deck's area is free."""
    pa, pb = rng.uniform(6, 10), rng.uniform(3.5, 6)
    pool = _frame_rect(
        plot.p,
        plot.theta + plot.jitter,
        plot.c_u + rng.uniform(-plot.w / 4, plot.w / 4),
        back + pb + rng.uniform(5, 10),
        pa,
        pb,
    )
    deck = _Rect(pool.cx, pool.cy, pool.theta, pa + 3, pb + 3)
    if occ.free_rect(deck):
        occ.take_rect(deck)
        lay.pools.append(pool)


def _add_outbuilding(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, plot: _Plot, back: float
) -> None:
    """A detached garage, shed or (rural) barn behind the house, if its area is free."""
    size, rural, lot_w = lay.size, plot.rural, plot.lot_w
    ow, od = (
        (rng.uniform(20, 56), rng.uniform(16, 34))
        if rural
        else (rng.uniform(15, 24), rng.uniform(14, 20))
    )
    ou = plot.c_u + rng.uniform(-lot_w / 3, lot_w / 3)
    ov = back + od / 2 + rng.uniform(6, 30 if rural else 12)
    o = _frame_rect(
        plot.p,
        plot.theta + plot.jitter + (rng.choice([0, math.pi / 2]) if rural else 0),
        ou,
        ov,
        1,
        1,
    )
    sec, outl, roof, pitch, wall, colour, mat, ex = _make_house(rng, ow, od, "outbuilding", lay.rho)
    shed = _House(
        o.cx, o.cy, o.theta, sec, outl, roof, pitch, wall * 0.8, colour, mat, "outbuilding", ex
    )
    spot = occ.free_house(shed, 4.0) if 0 <= shed.cx < size and 0 <= shed.cy < size else None
    if spot is not None:
        occ.take(spot)
        lay.houses.append(shed)


def _car_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]


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
    lit = np.asarray(_face_brightness(h, sun), _F)[faces]  # brightness of the face per pixel
    shade = lit * base.roof_tex[sl]
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
    height = _paint_fixtures(col, height, h, u, v, inside, lit, base.fine[sl])

    if damage is not None and damage != "no-damage" and rng is not None:
        col, height = _damage_roof(
            col, height, inside, u, v, along, shade, h, damage, base, sl, rng
        )

    cur = top[sl]
    win = inside & (height > cur)
    rgb[(slice(None), *sl)][:, win] = col[win].T
    cur[win] = height[win]
    kind[sl][win] = 1


def _face_brightness(h: _House, sun: np.ndarray) -> list[float]:
    """Relative brightness of each roof face under ``sun`` (4 faces per section: sloping down
    towards -v, +v, -u, +u), 1.0 for a flat roof in full sun."""
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
    return table


def _paint_fixtures(
    col: np.ndarray,
    height: np.ndarray,
    h: _House,
    u: np.ndarray,
    v: np.ndarray,
    inside: np.ndarray,
    lit: np.ndarray,
    fine: np.ndarray,
) -> np.ndarray:
    """Paint the roof's fixtures into ``col``; return the height map with them standing on it.

    Solar cells follow the roof plane (``lit``: face brightness per pixel); rooftop units and
    chimneys are boxes standing on the roof."""
    for what, cu, cv, a, b in h.extras:
        box = (np.abs(u - cu) <= a) & (np.abs(v - cv) <= b) & inside
        if not box.any():
            continue
        if what == "solar":
            # Dark cells with a light frame grid; they follow the roof plane.
            grid = (np.abs((u[box] - cu) % 3.3 - 1.65) > 1.3) | (
                np.abs((v[box] - cv) % 2.2 - 1.1) > 0.85
            )
            cell = np.where(grid[:, None], (92, 98, 112), (34, 42, 62)).astype(_F)
            col[box] = cell * (lit[box] * (1 + 0.02 * fine[box]))[:, None]
            continue
        tone = (
            (200, 200, 196)
            if what == "unit"
            else (128, 84, 70)
            if (cu * 7) % 2 < 1
            else (118, 116, 112)
        )
        col[box] = np.array(tone, _F) * (1 + 0.03 * fine[box])[:, None]
        height = np.where(box, height + (3.0 if what == "unit" else 4.0), height)
    return height


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
