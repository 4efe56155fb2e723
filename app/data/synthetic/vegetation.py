"""Trees and shrubs: where they grow (backyards, groves, street rows, woodland) and how a
canopy is painted, stripped and browned by the storm."""

from __future__ import annotations

import math

import numpy as np

from app.data.synthetic.geometry import (
    _Base,
    _Layout,
    _noise,
    _polyline_frames,
    _polyline_length,
    _Tree,
)
from app.data.synthetic.palette import _F
from app.data.synthetic.roads import _Occupancy


def _place_trees(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, density: float, coastal: bool
) -> None:
    """Clustered canopies: backyards, random groves, street rows and (rural) woodland, then
    shrubs along the house walls. The steps draw from ``rng`` in this order; keep it."""
    cands: list[tuple[float, float, bool]] = []  # x, y, may overhang road
    _backyard_trees(rng, lay, density, cands)
    _groves(rng, lay.size, density, cands)
    if rng.random() < 0.35:
        _street_trees(rng, lay, cands)
    if lay.settlement == "rural" or density > 0.7:
        _woodland(rng, lay.size, density, cands)
    if not cands:
        return
    _plant_trees(rng, lay, occ, cands, coastal)
    _foundation_shrubs(rng, lay, occ, density)


def _backyard_trees(rng: np.random.Generator, lay: _Layout, density: float, cands: list) -> None:
    """A small cluster behind some houses."""
    for h in lay.houses:
        if h.kind == "house" and rng.random() < 0.35 + 0.5 * density:
            c, s = math.cos(h.theta), math.sin(h.theta)
            back = max(v for _, v in h.outline) + rng.uniform(8, 30)
            u = rng.uniform(-20, 20)
            cx, cy = h.cx + u * c - back * s, h.cy + u * s + back * c
            for _ in range(int(rng.integers(1, 6))):
                cands.append((cx + rng.normal(0, 12), cy + rng.normal(0, 12), False))


def _groves(rng: np.random.Generator, size: int, density: float, cands: list) -> None:
    """Random groves of 3 to 13 trees anywhere."""
    n_groves = int(density * (size / 200) ** 2 * rng.uniform(2, 5))
    for _ in range(n_groves):
        gx, gy = rng.uniform(0, size, 2)
        spread = rng.uniform(10, 35)
        for _ in range(int(rng.integers(3, 14))):
            cands.append((gx + rng.normal(0, spread), gy + rng.normal(0, spread), False))


def _street_trees(rng: np.random.Generator, lay: _Layout, cands: list) -> None:
    """Rows of trees along the kerbs of streets with sidewalks (they may overhang the road)."""
    size = lay.size
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


def _woodland(rng: np.random.Generator, size: int, density: float, cands: list) -> None:
    """Woodland: a jittered grid of trees where low-frequency noise is high."""
    spacing = 15.0
    n = int(math.ceil(size / spacing))
    wood = _noise(rng, n, 90 / spacing)
    gy, gx = np.mgrid[0:n, 0:n].astype(float) * spacing
    gx += rng.uniform(-5, 5, gx.shape)
    gy += rng.uniform(-5, 5, gy.shape)
    keep = wood > 1.3 - 0.9 * density
    cands.extend((float(x), float(y), False) for x, y in zip(gx[keep], gy[keep], strict=True))


def _plant_trees(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, cands: list, coastal: bool
) -> None:
    """Keep the candidates on free ground (off roofs, roads unless allowed, the beach and the
    sea), then give each a species, size, height and tone."""
    size = lay.size
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


def _foundation_shrubs(
    rng: np.random.Generator, lay: _Layout, occ: _Occupancy, density: float
) -> None:
    """Foundation shrubs hugging the walls: lower than any eave, so they never cover a roof."""
    size = lay.size
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
