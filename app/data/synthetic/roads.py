"""Streets: suburban grids and country roads, and the occupancy map that keeps things apart."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from app.data.synthetic.geometry import _House, _house_mask, _Rect, _rect_mask, _Road, _Slices, _xy
from app.data.synthetic.palette import _ASPHALT0, _GRAVEL, _N_ASPHALT


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
