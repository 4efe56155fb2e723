"""Tiling coverage, stable ids, building counts and group splits."""

from __future__ import annotations

import numpy as np
import pytest

from app.data.base import DAMAGE_CLASSES, Building, Scene
from app.data.tiling import count_damage, split_groups, tile_positions, tile_scene


def make_scene(
    h: int = 100, w: int = 150, *, mask: bool = True, buildings: list[Building] | None = None
) -> Scene:
    rng = np.random.default_rng(h * 1000 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    m = (rng.random((h, w)) > 0.8).astype(np.uint8) if mask else None
    return Scene("scene_a", "test", image, m, buildings or [], {"disaster": "x"}, "loc_a")


def rect(
    uid: str, x0: float, y0: float, x1: float, y1: float, damage: str | None = None
) -> Building:
    return Building(uid, ((x0, y0), (x1, y0), (x1, y1), (x0, y1)), damage)


@pytest.mark.parametrize("overlap", [0, 8, 24])
def test_tiles_cover_every_pixel_and_match_the_scene(overlap: int) -> None:
    scene = make_scene()
    covered = np.zeros(scene.image.shape[:2], int)
    tiles = list(tile_scene(scene, size=32, overlap=overlap))
    for t in tiles:
        assert t.image.shape == (32, 32, 3) and t.mask.shape == (32, 32)
        assert 0 <= t.x <= 150 - 32 and 0 <= t.y <= 100 - 32
        np.testing.assert_array_equal(t.image, scene.image[t.y : t.y + 32, t.x : t.x + 32])
        np.testing.assert_array_equal(t.mask, scene.mask[t.y : t.y + 32, t.x : t.x + 32])
        covered[t.y : t.y + 32, t.x : t.x + 32] += 1
        assert (t.scene_id, t.group, t.size) == ("scene_a", "loc_a", 32)
        assert t.meta == {"disaster": "x"}
    assert covered.min() >= 1
    assert len({t.tile_id for t in tiles}) == len(tiles)


def test_last_row_and_column_are_shifted_back_inside() -> None:
    assert tile_positions(100, 32, 0) == [0, 32, 64, 68]
    assert tile_positions(96, 32, 0) == [0, 32, 64]
    assert tile_positions(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert tile_positions(32, 32, 0) == [0]


def test_tile_ids_are_stable_and_formatted() -> None:
    ids1 = [t.tile_id for t in tile_scene(make_scene(), size=64)]
    ids2 = [t.tile_id for t in tile_scene(make_scene(), size=64)]
    assert ids1 == ids2
    assert ids1[0] == "scene_a_x00000_y00000"
    assert "scene_a_x00086_y00036" in ids1  # shifted last column/row


def test_scene_without_mask_gives_tiles_without_mask() -> None:
    tiles = list(tile_scene(make_scene(mask=False), size=64))
    assert all(t.mask is None for t in tiles)


def test_small_scene_is_reflect_padded_and_recorded() -> None:
    scene = make_scene(20, 40)
    (tile,) = tile_scene(scene, size=64)
    assert tile.image.shape == (64, 64, 3) and tile.mask.shape == (64, 64)
    np.testing.assert_array_equal(tile.image[:20, :40], scene.image)
    np.testing.assert_array_equal(tile.image[20, :40], scene.image[18])  # reflected row
    np.testing.assert_array_equal(tile.mask[20, :40], scene.mask[18])  # mask padded alike
    assert tile.meta["padded"] == "reflect from 40x20 to 64x64"
    assert (tile.x, tile.y) == (0, 0)


def test_buildings_are_counted_by_centroid() -> None:
    buildings = [
        rect("a", 2, 2, 10, 10, "destroyed"),  # centroid (6, 6): tile (0, 0)
        rect("b", 28, 2, 40, 10, "no-damage"),  # centroid (34, 6): tile (32, 0), spans both
        rect("c", 60, 60, 70, 70),  # centroid (65, 65): no damage label
        rect("d", 95, 95, 100.5, 100.5, "minor-damage"),  # on the border, clamped inside
    ]
    scene = make_scene(100, 100, buildings=buildings)
    tiles = {(t.x, t.y): t for t in tile_scene(scene, size=32)}
    assert tiles[(0, 0)].building_count == 1
    assert tiles[(0, 0)].damage_counts["destroyed"] == 1
    assert tiles[(32, 0)].building_count == 1
    assert tiles[(32, 0)].damage_counts["no-damage"] == 1
    assert tiles[(64, 64)].building_count == 1
    assert sum(tiles[(64, 64)].damage_counts.values()) == 0
    assert tiles[(68, 68)].damage_counts["minor-damage"] == 1
    assert set(tiles[(0, 0)].damage_counts) == set(DAMAGE_CLASSES)


def test_count_damage_has_every_class() -> None:
    counts = count_damage([rect("a", 0, 0, 1, 1, "destroyed"), rect("b", 0, 0, 1, 1)])
    assert counts == {c: int(c == "destroyed") for c in DAMAGE_CLASSES}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"size": 256, "overlap": 300},
            "The 'overlap' parameter must be an int in [0, size). Got 300 instead.",
        ),
        (
            {"size": 256, "overlap": 256},
            "The 'overlap' parameter must be an int in [0, size). Got 256 instead.",
        ),
        (
            {"size": 256, "overlap": -1},
            "The 'overlap' parameter must be an int in [0, size). Got -1 instead.",
        ),
        (
            {"size": 256, "overlap": 1.5},
            "The 'overlap' parameter must be an int in [0, size). Got 1.5 instead.",
        ),
        ({"size": 0}, "The 'size' parameter must be an int >= 1. Got 0 instead."),
        ({"size": True}, "The 'size' parameter must be an int >= 1. Got True instead."),
    ],
)
def test_arguments_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        next(tile_scene(make_scene(), **kwargs))
    assert str(info.value) == message


# ------------------------------------------------------------------------------------------ splits


def test_split_is_deterministic_and_input_order_independent() -> None:
    groups = [f"loc_{i:03d}" for i in range(40)]
    a = split_groups(groups, seed=7)
    b = split_groups(list(reversed(groups)) + groups[:5], seed=7)  # order and duplicates
    assert a == b
    assert set(a) == set(groups)
    assert set(a.values()) == {"train", "val", "test"}
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 28, "val": 6, "test": 6}
    assert split_groups(groups, seed=8) != a


def test_each_split_gets_a_group_from_three_groups() -> None:
    for seed in range(20):
        result = split_groups(["a", "b", "c"], seed=seed)
        assert sorted(result.values()) == ["test", "train", "val"]
    result = split_groups([f"g{i}" for i in range(4)], seed=0, fractions=(0.98, 0.01, 0.01))
    assert set(result.values()) == {"train", "val", "test"}


def test_few_groups_fill_train_then_val() -> None:
    assert split_groups(["only"], seed=0) == {"only": "train"}
    assert sorted(split_groups(["a", "b"], seed=0).values()) == ["train", "val"]
    assert split_groups([], seed=0) == {}


def test_zero_fraction_split_stays_empty() -> None:
    result = split_groups([f"g{i}" for i in range(10)], seed=0, fractions=(0.8, 0.2, 0.0))
    assert "test" not in result.values()


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (0.7, 0.3), (1.2, -0.1, -0.1), ("a", 0, 1)])
def test_bad_fractions_are_refused(fractions: tuple) -> None:
    with pytest.raises(ValueError, match=r"The 'fractions' parameter must be 3 non-negative"):
        split_groups(["a"], seed=0, fractions=fractions)
