"""Cut scenes into fixed-size tiles and assign location groups to train/val/test.

Decisions:

* Tiles cover the whole scene: positions step by ``size - overlap`` and the last row/column is
  shifted back to end at the image border, so edge tiles overlap their neighbours more instead
  of being padded or dropped.
* A scene smaller than ``size`` on a side is reflect-padded (image *and* mask, so they stay
  consistent) up to ``size``; the tile's ``meta`` records ``padded`` and the real extent.
  Reflected copies of buildings are not counted.
* A building belongs to every tile that contains its polygon's area centroid (half-open box
  ``[x, x+size) x [y, y+size)``); with overlap it may be counted in two tiles.
* Splits are drawn per group from a seeded hash ranking (see :func:`split_groups`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.data.base import DAMAGE_CLASSES, Building, Scene

SPLITS: tuple[str, str, str] = ("train", "val", "test")


@dataclass
class Tile:
    """One ``size x size`` crop of a scene with its labels and the scene's metadata."""

    tile_id: str
    scene_id: str
    group: str
    x: int
    y: int
    size: int
    image: np.ndarray  # (size, size, 3) uint8
    mask: np.ndarray | None  # (size, size) uint8 {0, 1}
    building_count: int
    damage_counts: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)


def tile_id(scene_id: str, x: int, y: int) -> str:
    """Stable tile id: same scene and position give the same id across runs."""
    return f"{scene_id}_x{x:05d}_y{y:05d}"


def tile_positions(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last one is shifted back to end at ``length``."""
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def tile_scene(scene: Scene, size: int = 256, overlap: int = 0) -> Iterator[Tile]:
    """Yield the tiles of ``scene`` row by row (y, then x)."""
    check_int("size", size, low=1)
    check_int("overlap", overlap, low=0, high=size, high_text="[0, size)")
    image, mask = scene.image, scene.mask
    height, width = image.shape[:2]
    meta = dict(scene.meta)
    if height < size or width < size:
        pad = ((0, max(0, size - height)), (0, max(0, size - width)))
        image = np.pad(image, (*pad, (0, 0)), mode="reflect" if min(height, width) > 1 else "edge")
        if mask is not None:
            mask = np.pad(mask, pad, mode="reflect" if min(height, width) > 1 else "edge")
        meta["padded"] = f"reflect from {width}x{height} to {image.shape[1]}x{image.shape[0]}"
    # Clamp into the image: polygons may touch or cross the border by the loader's tolerance.
    centroids = [
        (min(max(cx, 0.0), np.nextafter(width, 0)), min(max(cy, 0.0), np.nextafter(height, 0)))
        for cx, cy in (_centroid(b.polygon) for b in scene.buildings)
    ]
    for y in tile_positions(height, size, overlap):
        for x in tile_positions(width, size, overlap):
            inside = [
                b
                for b, (cx, cy) in zip(scene.buildings, centroids, strict=True)
                if x <= cx < x + size and y <= cy < y + size
            ]
            yield Tile(
                tile_id=tile_id(scene.scene_id, x, y),
                scene_id=scene.scene_id,
                group=scene.group,
                x=x,
                y=y,
                size=size,
                image=np.ascontiguousarray(image[y : y + size, x : x + size]),
                mask=None
                if mask is None
                else np.ascontiguousarray(mask[y : y + size, x : x + size]),
                building_count=len(inside),
                damage_counts=count_damage(inside),
                meta=dict(meta),
            )


def count_damage(buildings: Iterable[Building]) -> dict[str, int]:
    """Buildings per damage class, every class present (0 when none); unlabelled are not counted."""
    counts = dict.fromkeys(DAMAGE_CLASSES, 0)
    for building in buildings:
        if building.damage in counts:
            counts[building.damage] += 1
    return counts


def _centroid(polygon: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Area centroid (shoelace); the vertex mean for degenerate (zero-area) polygons."""
    if not polygon:
        return (math.nan, math.nan)
    xs = np.asarray([p[0] for p in polygon], dtype=np.float64)
    ys = np.asarray([p[1] for p in polygon], dtype=np.float64)
    xs1, ys1 = np.roll(xs, -1), np.roll(ys, -1)
    cross = xs * ys1 - xs1 * ys
    area = cross.sum() / 2
    if abs(area) < 1e-9:
        return float(xs.mean()), float(ys.mean())
    return (
        float(((xs + xs1) * cross).sum() / (6 * area)),
        float(((ys + ys1) * cross).sum() / (6 * area)),
    )


def split_groups(
    groups: Sequence[str],
    seed: int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> dict[str, str]:
    """Map each distinct group to ``"train"``, ``"val"`` or ``"test"``.

    Groups are ranked by ``sha256(f"{seed}:{group}")`` and cut at the cumulative fractions
    (largest-remainder rounding). The result depends only on the *set* of groups and the seed,
    not on input order, and adding groups moves few existing ones. Every split with a positive
    fraction gets at least one group when there are enough groups (>= the number of such
    splits); with fewer, they are filled in the order train, val, test.
    """
    check_int("seed", seed)
    fr = check_fractions(fractions)
    unique = sorted(set(groups))
    ranked = sorted(unique, key=lambda g: (hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), g))
    counts = _split_counts(len(ranked), fr)
    out: dict[str, str] = {}
    start = 0
    for split, count in zip(SPLITS, counts, strict=True):
        for group in ranked[start : start + count]:
            out[group] = split
        start += count
    return out


def _split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    active = [i for i, f in enumerate(fractions) if f > 0]
    if n < len(active):
        counts = [0, 0, 0]
        for i in active[:n]:
            counts[i] = 1
        return counts
    raw = [f * n for f in fractions]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i in active:  # every active split gets one, taken from the largest
        if counts[i] == 0:
            donor = max(range(3), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if (
        len(values) != 3
        or not all(math.isfinite(v) and v >= 0 for v in values)
        or abs(sum(values) - 1) > 1e-6
    ):
        raise ValueError(
            "The 'fractions' parameter must be 3 non-negative numbers (train, val, test) summing "
            f"to 1. Got {fractions!r} instead."
        )
    return values  # type: ignore[return-value]


def check_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None, high_text: str = ""
) -> None:
    """sklearn-style parameter check: say the name, the allowed range and what was given."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and low is not None and value < low:
        ok = False
    if ok and high is not None and value >= high:
        ok = False
    if not ok:
        if high is not None:
            rule = f"an int in {high_text or f'[{low}, {high})'}"
        elif low is not None:
            rule = f"an int >= {low}"
        else:
            rule = "an int"
        raise ValueError(f"The {name!r} parameter must be {rule}. Got {value!r} instead.")
