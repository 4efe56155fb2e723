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

import numpy as np
from PIL import Image, ImageFilter

from app.data.base import Building, Scene
from app.data.synthetic.buildings import _paint_car, _paint_roof, _place_along
from app.data.synthetic.damage import _assign_damage, _ground_debris
from app.data.synthetic.geometry import _Base, _blend, _Layout, _noise, _smoothstep
from app.data.synthetic.light import _cast_shadow, _sun_vector
from app.data.synthetic.palette import _F, _GRASS, _ROAD, _SAND, _SOIL, _WATER
from app.data.synthetic.roads import _Occupancy, _rural_roads, _suburban_roads
from app.data.synthetic.terrain import _base
from app.data.synthetic.vegetation import _paint_tree, _place_trees

GSD_M: float = 0.5
PHASES: tuple[str, ...] = ("pre", "post")
SOURCE = "synthetic"
DISASTER = "synthetic-hurricane"
MIN_SIZE = 64

#: Optics: a 3x3 Gaussian (sigma ~0.65 px), much cheaper than ImageFilter.GaussianBlur.
_BLUR = ImageFilter.Kernel((3, 3), (1, 3, 1, 3, 9, 3, 1, 3, 1), 25)


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
