"""The public entry points: a location's layout, its phases rendered, ``Scene`` records.

A location is ``(seed, index, size)``: ``_layout`` draws roads, lots, buildings and trees from
one generator, ``terrain._base`` textures the ground once, and ``_render`` paints each phase.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from app.data.base import Building, Scene
from app.data.synthetic.buildings import _paint_car, _paint_roof, _place_along
from app.data.synthetic.damage import _assign_damage, _ground_debris, _storm_ground
from app.data.synthetic.geometry import _Base, _Layout
from app.data.synthetic.light import _acquire, _sun_vector
from app.data.synthetic.palette import _F, _GRASS, _ROAD, _SAND, _SOIL, _WATER
from app.data.synthetic.roads import _Occupancy, _rural_roads, _suburban_roads
from app.data.synthetic.terrain import _base, _shore_line
from app.data.synthetic.vegetation import _paint_tree, _place_trees

GSD_M: float = 0.5
PHASES: tuple[str, ...] = ("pre", "post")
SOURCE = "synthetic"
DISASTER = "synthetic-hurricane"
MIN_SIZE = 64


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
        shore_d, ang = _shore_line(rng, size)
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


def _render(lay: _Layout, base: _Base, phase: str) -> tuple[np.ndarray, list[str | None], dict]:
    """Paint one phase onto the shared ground and return (image, damage per building, meta).

    The phase's generator is drawn from in a fixed order (post: flood colour, damage classes,
    roof damage, debris; both: haze and gain); keep it when editing."""
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
        flood, wrack, flooded_fraction = _storm_ground(rng, lay, base, rgb, label, top)
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

    image = _acquire(rng, rgb, top, base.grain[::-1] if post else base.grain, az, el)
    meta = {
        **_land_cover(base.mask, kind, label),
        "flooded_fraction": round(flooded_fraction, 4),
        "sun_azimuth": round(az, 2),
        "sun_elevation": round(el, 2),
    }
    return image, classes, meta


def _land_cover(mask: np.ndarray, kind: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Land cover fractions as seen from above (buildings by footprint, then canopy, then
    ground)."""
    code = np.where(mask > 0, 6, np.where(kind == 2, 5, label))
    frac = np.bincount(code.ravel(), minlength=7) / float(code.size)
    return {
        "land_grass": float(frac[_GRASS]),
        "land_soil": float(frac[_SOIL]),
        "land_sand": float(frac[_SAND]),
        "land_water": float(frac[_WATER]),
        "land_road": float(frac[_ROAD]),
        "land_tree": float(frac[5]),
        "land_building": float(frac[6]),
    }


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
