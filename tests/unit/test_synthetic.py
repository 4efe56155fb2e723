"""Synthetic aerial scenes: determinism, record shapes, labels that match the drawn buildings."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon2mask

from app.data.base import DAMAGE_CLASSES, Scene
from app.data.synthetic import generate_pair, generate_scene, iter_synthetic

SIZE = 256

META_KEYS = {
    "disaster",
    "disaster_type",
    "phase",
    "gsd",
    "sun_azimuth",
    "sun_elevation",
    "density",
    "shoreline",
    "land_grass",
    "land_soil",
    "land_sand",
    "land_water",
    "land_road",
    "land_tree",
    "land_building",
    "flooded_fraction",
}
LAND_KEYS = [k for k in META_KEYS if k.startswith("land_")]


@pytest.fixture(scope="module")
def pairs() -> list[tuple[Scene, Scene]]:
    return [generate_pair(7, i, SIZE) for i in range(6)]


def _same(a: Scene, b: Scene) -> None:
    assert a.scene_id == b.scene_id
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask is not None and b.mask is not None
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.buildings == b.buildings
    assert a.meta == b.meta


def test_same_inputs_give_identical_scenes() -> None:
    _same(generate_scene(3, 11, SIZE, "pre"), generate_scene(3, 11, SIZE, "pre"))
    _same(generate_scene(3, 11, SIZE, "post"), generate_scene(3, 11, SIZE, "post"))


def test_pair_matches_single_scenes() -> None:
    pre, post = generate_pair(3, 11, SIZE)
    _same(pre, generate_scene(3, 11, SIZE, "pre"))
    _same(post, generate_scene(3, 11, SIZE, "post"))


def test_different_index_or_seed_gives_different_scenes() -> None:
    a = generate_scene(3, 11, SIZE)
    b = generate_scene(3, 12, SIZE)
    c = generate_scene(4, 11, SIZE)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert a.group != b.group


def test_global_random_state_is_untouched() -> None:
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    generate_scene(0, 0, SIZE)
    assert np.random.random() == before


def test_shapes_dtypes_and_ids(pairs: list[tuple[Scene, Scene]]) -> None:
    for index, (pre, post) in enumerate(pairs):
        group = f"synthetic-7_{index:05d}"
        for scene, phase in ((pre, "pre"), (post, "post")):
            assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
            assert scene.mask is not None
            assert scene.mask.shape == (SIZE, SIZE) and scene.mask.dtype == np.uint8
            assert set(np.unique(scene.mask)) <= {0, 1}
            assert scene.scene_id == f"{group}_{phase}"
            assert scene.group == group
            assert scene.source == "synthetic"
            assert scene.meta["phase"] == phase
            for j, b in enumerate(scene.buildings):
                assert b.uid == f"{group}-b{j:04d}"
                assert len(b.polygon) in (4, 6)  # rectangle or L
            # Not flat vector art: plenty of distinct colours.
            assert len(np.unique(scene.image.reshape(-1, 3), axis=0)) > 2000


def test_mask_is_the_rasterised_polygons(pairs: list[tuple[Scene, Scene]]) -> None:
    for pre, _ in pairs:
        drawn = np.zeros((SIZE, SIZE), bool)
        for b in pre.buildings:
            poly = np.asarray(b.polygon)[:, ::-1]  # (x, y) -> (row, col)
            one = polygon2mask((SIZE, SIZE), poly)
            assert one.any(), f"{b.uid} has no pixel in the scene"
            drawn |= one
        assert pre.mask is not None
        mismatch = int((drawn != pre.mask.astype(bool)).sum())
        assert mismatch <= 2 + 0.001 * drawn.sum(), f"{pre.scene_id}: {mismatch} pixels differ"


def test_buildings_look_different_from_their_surroundings(pairs: list[tuple[Scene, Scene]]) -> None:
    # The label must mark something visible: roofs differ from the ring of ground around them.
    from scipy import ndimage

    for pre, _ in pairs:
        assert pre.mask is not None
        m = pre.mask.astype(bool)
        if m.sum() < 200:
            continue
        ring = ndimage.binary_dilation(m, iterations=3) & ~m
        grey = pre.image.astype(float).mean(axis=2)
        edge = np.hypot(*np.gradient(grey))
        assert (
            edge[ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m)].mean()
            > edge[~ring & ~m].mean()
        )


def test_pre_and_post_share_layout_and_labels(pairs: list[tuple[Scene, Scene]]) -> None:
    for pre, post in pairs:
        assert pre.group == post.group
        assert pre.mask is not None and post.mask is not None
        assert np.array_equal(pre.mask, post.mask)
        assert [b.polygon for b in pre.buildings] == [b.polygon for b in post.buildings]
        assert [b.uid for b in pre.buildings] == [b.uid for b in post.buildings]
        assert all(b.damage is None for b in pre.buildings)
        assert all(b.damage in DAMAGE_CLASSES[:4] for b in post.buildings)
        assert not np.array_equal(pre.image, post.image)


def test_damage_frequencies_are_plausible() -> None:
    counts = dict.fromkeys(DAMAGE_CLASSES[:4], 0)
    for index in range(4):
        _, post = generate_pair(5, index, 512)
        for b in post.buildings:
            counts[b.damage] += 1
    assert counts["no-damage"] == max(counts.values())
    assert counts["minor-damage"] + counts["major-damage"] + counts["destroyed"] > 0


def test_meta_is_flat_and_complete(pairs: list[tuple[Scene, Scene]]) -> None:
    for pre, post in pairs:
        for scene in (pre, post):
            assert set(scene.meta) >= META_KEYS
            assert all(isinstance(v, (str, int, float, bool)) for v in scene.meta.values())
            assert scene.meta["disaster"] == "synthetic-hurricane"
            assert scene.meta["disaster_type"] in ("wind", "flooding")
            assert scene.meta["gsd"] == 0.5
            assert 0 <= scene.meta["sun_azimuth"] < 360 and 0 < scene.meta["sun_elevation"] < 90
            assert isinstance(scene.meta["shoreline"], bool)
            assert sum(scene.meta[k] for k in LAND_KEYS) == pytest.approx(1.0, abs=1e-6)
            assert all(0 <= scene.meta[k] <= 1 for k in LAND_KEYS)
            assert scene.mask is not None
            assert scene.meta["land_building"] == pytest.approx(scene.mask.mean())
        assert pre.meta["flooded_fraction"] == 0.0
        assert 0.0 <= post.meta["flooded_fraction"] <= 1.0
        assert pre.meta["disaster_type"] == post.meta["disaster_type"]
        assert pre.meta["density"] == post.meta["density"]


def test_shore_and_flood_show_up_in_labels_and_pixels(pairs: list[tuple[Scene, Scene]]) -> None:
    coasts = [p for p in pairs if p[0].meta["shoreline"]]
    floods = [p for p in pairs if p[0].meta["disaster_type"] == "flooding"]
    assert coasts and floods  # the fixture's locations cover both cases
    for pre, _ in coasts:
        assert pre.meta["land_water"] > 0.03 and pre.meta["land_sand"] > 0.01
        # The sea is the bluest part of the scene.
        blue = pre.image[..., 2].astype(int) - pre.image[..., 0].astype(int)
        assert np.percentile(blue, 97) > 25
    for pre, post in pairs:
        if not pre.meta["shoreline"]:
            assert pre.meta["land_water"] < 0.02  # pools only
        assert (post.meta["flooded_fraction"] > 0.05) == (post.meta["disaster_type"] == "flooding")


def test_building_fraction_is_plausible() -> None:
    fractions = []
    for index in range(8):
        scene = generate_scene(0, index, 512)
        assert scene.mask is not None
        fractions.append(float(scene.mask.mean()))
    assert all(0.0 < f < 0.35 for f in fractions), fractions
    assert 0.04 <= float(np.mean(fractions)) <= 0.2, fractions


def test_iter_synthetic_yields_locations_in_order() -> None:
    scenes = list(iter_synthetic(2, seed=1, size=SIZE))
    assert [s.scene_id for s in scenes] == [
        "synthetic-1_00000_pre",
        "synthetic-1_00000_post",
        "synthetic-1_00001_pre",
        "synthetic-1_00001_post",
    ]
    _same(scenes[3], generate_scene(1, 1, SIZE, "post"))
    only_post = list(iter_synthetic(2, seed=1, size=SIZE, phases=("post",)))
    assert [s.meta["phase"] for s in only_post] == ["post", "post"]
    _same(only_post[0], scenes[1])
    assert list(iter_synthetic(0, size=SIZE)) == []


def test_bad_phase_is_refused_with_a_clear_message() -> None:
    message = "The 'phase' parameter must be one of ['post', 'pre']. Got 'x' instead."
    with pytest.raises(ValueError) as info:
        generate_scene(0, 0, SIZE, phase="x")
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        next(iter_synthetic(1, size=SIZE, phases=("pre", "x")))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seed": -1, "index": 0, "size": SIZE}, "seed"),
        ({"seed": 0, "index": -3, "size": SIZE}, "index"),
        ({"seed": 0, "index": 0, "size": 10}, "size"),
        ({"seed": 0, "index": 0, "size": 256.0}, "size"),
    ],
)
def test_bad_numbers_are_refused(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"The '{name}' parameter must be an integer"):
        generate_pair(**kwargs)
