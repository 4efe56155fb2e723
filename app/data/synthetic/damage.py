"""Storm damage (post phase only): damage classes per building, broken roofs and rubble,
and debris on the ground."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from app.data.base import DAMAGE_CLASSES
from app.data.synthetic.geometry import (
    _Base,
    _blend,
    _erode,
    _House,
    _Layout,
    _noise,
    _Slices,
    _smoothstep,
)
from app.data.synthetic.palette import _DEBRIS, _F, _GRASS, _RUBBLE, _WATER


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


@dataclass
class _Roof:
    """One building's pixels while its roof is damaged: box-local coordinates (u, v, along),
    the colour and height being painted, the storm's noise and the tarp colour."""

    col: np.ndarray
    height: np.ndarray
    inside: np.ndarray
    u: np.ndarray
    v: np.ndarray
    along: np.ndarray
    shade: np.ndarray
    h: _House
    fine: np.ndarray
    small: np.ndarray
    med: np.ndarray
    bounds: tuple[float, float, float, float]  # umin, vmin, umax, vmax of the outline
    tarp_c: np.ndarray


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
    umin, vmin = min(p[0] for p in h.outline), min(p[1] for p in h.outline)
    umax, vmax = max(p[0] for p in h.outline), max(p[1] for p in h.outline)
    tarp_c = np.array(
        rng.choice([(40, 96, 182), (52, 112, 190), (30, 80, 160), (70, 120, 170)]), _F
    )
    roof = _Roof(
        col,
        height,
        inside,
        u,
        v,
        along,
        shade,
        h,
        base.fine[sl],
        base.small[sl],
        base.med[sl],
        (umin, vmin, umax, vmax),
        tarp_c,
    )
    if damage == "minor-damage":
        _minor_damage(rng, roof)
    elif damage == "major-damage":
        _major_damage(rng, roof)
    elif damage == "destroyed":
        _destroyed(rng, roof)
    return roof.col, roof.height


def _patches(rng: np.random.Generator, roof: _Roof, k: int, lo: float, hi: float) -> np.ndarray:
    """``k`` random boxes (half-sides ``lo``..``hi``) on the roof."""
    u, v = roof.u, roof.v
    umin, vmin, umax, vmax = roof.bounds
    m = np.zeros(u.shape, bool)
    for _ in range(k):
        pu, pv = rng.uniform(umin, umax), rng.uniform(vmin, vmax)
        m |= (np.abs(u - pu) <= rng.uniform(lo, hi)) & (np.abs(v - pv) <= rng.uniform(lo, hi))
    return m & roof.inside


def _tarp(rng: np.random.Generator, roof: _Roof, frac: float) -> np.ndarray:
    """A blue tarp over ``frac`` of one roof face of a random wing."""
    u, v, h = roof.u, roof.v, roof.h
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
    return m & roof.inside


def _minor_damage(rng: np.random.Generator, roof: _Roof) -> None:
    """Missing shingles showing the underlay, and half the time a tarp."""
    col, shade, fine = roof.col, roof.shade, roof.fine
    miss = _patches(rng, roof, int(rng.integers(2, 7)), 1.0, 3.0)
    under = np.array(rng.choice([(60, 54, 48), (188, 162, 122)]), _F)
    col[miss] = under * shade[miss][:, None]
    if rng.random() < 0.5:
        t = _tarp(rng, roof, rng.uniform(0.25, 0.6))
        col[t] = roof.tarp_c * shade[t][:, None] * (1 + 0.05 * fine[t])[:, None]
        rim = t & ~_erode(t, 1)
        col[rim] *= 0.7


def _major_damage(rng: np.random.Generator, roof: _Roof) -> None:
    """Holes open to the rafters (and lower), maybe a tarp over part of the rest."""
    col, shade, fine, small, med = roof.col, roof.shade, roof.fine, roof.small, roof.med
    blob = (0.6 * med + 0.4 * small + rng.normal(0, 0.3)) > rng.uniform(-0.6, 0.3)
    box = _patches(rng, roof, int(rng.integers(1, 3)), 5.0, 12.0)
    miss = roof.inside & blob & box | _patches(rng, roof, int(rng.integers(3, 8)), 1.0, 3.5)
    rafters = np.abs(((roof.along / 3.0) % 1.0) - 0.5) < 0.17
    dark = np.array([52, 46, 40], _F) * (1 + 0.2 * small[miss])[:, None]
    wood = np.array([172, 142, 104], _F) * shade[miss][:, None]
    col[miss] = np.where(rafters[miss][:, None], wood, dark)
    roof.height = np.where(miss, roof.height - 2.0, roof.height)
    if rng.random() < 0.45:
        t = _tarp(rng, roof, rng.uniform(0.3, 0.8)) & ~miss
        col[t] = roof.tarp_c * shade[t][:, None] * (1 + 0.05 * fine[t])[:, None]


def _destroyed(rng: np.random.Generator, roof: _Roof) -> None:
    """A rubble pile with slabs of the old roof (70 %), or a bare slab with a little debris."""
    col, inside, u, v = roof.col, roof.inside, roof.u, roof.v
    fine, small, med = roof.fine, roof.small, roof.med
    umin, vmin, umax, vmax = roof.bounds
    if rng.random() < 0.7:
        # Rubble pile: a jumble of timber, roofing and drywall with no roof faces left.
        mix = 0.9 * small + 0.5 * med + 0.45 * fine + rng.normal(0, 0.3)
        pick = np.clip(((mix + 2.2) * 2.0).astype(int), 0, len(_RUBBLE) - 1)
        rub = _RUBBLE[pick] * (0.9 + 0.08 * fine)[..., None]
        rub[fine < -1.5] *= 0.5  # voids between pieces
        pile = 2.0 + 1.5 * np.clip(med + 0.5 * small, -1, 2)
        roof_c = np.array(roof.h.colour, _F)
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
        roof.height = np.where(inside, pile, roof.height)
    else:
        # Wiped to the slab: a concrete foundation with a little debris.
        slab = np.array([182, 178, 168], _F) * (1 + 0.04 * fine + 0.05 * small)[..., None]
        bits = (fine > 1.3) & inside
        slab[bits] = _DEBRIS[(np.abs(small[bits]) * 5).astype(int) % len(_DEBRIS)]
        col[inside] = slab[inside]
        roof.height = np.where(inside, 0.6, roof.height)


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


def _storm_ground(
    rng: np.random.Generator,
    lay: _Layout,
    base: _Base,
    rgb: np.ndarray,
    label: np.ndarray,
    top: np.ndarray,
) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """Storm-burnt lawns, sand washed inland, then flood water over low ground (flooding
    scenes). Each is one blend of the whole image towards a colour, weighted per pixel.

    Returns (flooded pixels, high-water wrack line, flooded fraction); None, None, 0.0 when
    the scene is not flooded."""
    brown = (label == _GRASS) * _F(0.12 + 0.18 * lay.severity)
    _blend(rgb, (142, 132, 96), brown)
    if lay.shore_d is not None:
        reach = lay.shore_d - lay.beach + 30 * base.large + 14 * base.med + 2 * base.small
        over = _smoothstep(-10, 10, 20 + 110 * lay.severity - reach) * (lay.shore_d > 0)
        over *= _smoothstep(-0.9, 0.6, base.med + 0.6 * base.large + 0.15 * base.small) * _F(0.8)
        _blend(rgb, (206, 192, 160), over)
    if lay.disaster_type != "flooding":
        return None, None, 0.0
    # Murky water over the lowest ``lay.flood_target`` of the land; cars go under.
    elev = base.large * 0.6 + base.large.T[::-1, :] * 0.5
    elev += base.med * 0.15
    if lay.shore_d is not None:
        elev += np.clip(lay.shore_d, 0, 400) * _F(1 / 250)
    land = label != _WATER
    sub = elev[::4, ::4][land[::4, ::4]]
    thr = float(np.quantile(sub, lay.flood_target)) if sub.size else -9.0
    depth = _F(thr) - elev
    flood = (depth > 0) & land
    murk = np.array(rng.choice([(124, 108, 80), (108, 100, 72), (132, 116, 88), (96, 88, 70)]), _F)
    sheen = 1 + 0.04 * base.large + 0.03 * base.med
    alpha = np.clip(0.3 + depth * 2.5, 0, 0.93) * (flood & (top < 4.0))  # cars go under
    for ch in range(3):
        rgb[ch] += (murk[ch] * sheen - rgb[ch]) * alpha
    wrack = (depth < 0) & (depth > -0.04) & land  # debris line at the high-water mark
    return flood, wrack, float(flood.mean())
