"""xBD loader on small folders written here, plus one real-data test on ../shared/data."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app import config
from app.data.base import DatasetError, LoadReport
from app.data.xbd import count_xbd, iter_xbd, list_xbd, parse_wkt, read_xbd_scene

SIZE = 64


def square(x0: float, y0: float, x1: float, y1: float) -> str:
    return f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"


def feature(wkt: str, uid: str, subtype: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"feature_type": "building", "uid": uid}
    if subtype is not None:
        props["subtype"] = subtype
    return {"properties": props, "wkt": wkt}


def label(stem: str, features: list[dict[str, Any]], size: int = SIZE) -> dict[str, Any]:
    return {
        "metadata": {
            "sensor": "WORLDVIEW02",
            "gsd": 2.0,
            "capture_date": "2019-01-01T00:00:00.000Z",
            "off_nadir_angle": 10.5,
            "sun_azimuth": 140.0,
            "sun_elevation": 50.0,
            "disaster": "test-flood",
            "disaster_type": "flooding",
            "width": size,
            "height": size,
            "img_name": f"{stem}.png",
        },
        "features": {"lng_lat": [], "xy": features},
    }


def write_scene(
    root: Path,
    stem: str,
    features: list[dict[str, Any]] | None = None,
    *,
    ext: str = ".png",
    size: int = SIZE,
    label_obj: Any = None,
) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(stem)).integers(0, 256, (size, size, 3), dtype=np.uint8)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF", ".TIF": "TIFF"}[ext]
    Image.fromarray(rgb).save(root / "images" / f"{stem}{ext}", format=fmt)
    obj = label_obj if label_obj is not None else label(stem, features or [])
    text = obj if isinstance(obj, str) else json.dumps(obj)
    (root / "labels" / f"{stem}.json").write_text(text)


@pytest.fixture
def xbd_root(tmp_path: Path) -> Path:
    root = tmp_path / "xbd"
    pre = [feature(square(10, 10, 20, 20), "b1"), feature(square(40, 40, 50, 56), "b2")]
    post = [
        feature(square(10, 10, 20, 20), "b1", "destroyed"),
        feature(square(40, 40, 50, 56), "b2", "no-damage"),
    ]
    write_scene(root, "flood_00000001_pre_disaster", pre)
    write_scene(root, "flood_00000001_post_disaster", post, ext=".jpg")
    write_scene(root, "flood_00000002_pre_disaster", [], ext=".TIF")
    return root


def test_loads_scenes_sorted_with_groups_phases_and_masks(xbd_root: Path) -> None:
    report = LoadReport()
    scenes = list(iter_xbd(xbd_root, report))
    assert [s.scene_id for s in scenes] == [
        "flood_00000001_post_disaster",
        "flood_00000001_pre_disaster",
        "flood_00000002_pre_disaster",
    ]
    assert report.loaded == 3 and report.skipped == []
    post, pre, other = scenes
    assert post.group == pre.group == "flood_00000001"
    assert other.group == "flood_00000002"
    assert (pre.meta["phase"], post.meta["phase"]) == ("pre", "post")
    assert post.source == "xbd"
    assert pre.meta["disaster"] == "test-flood" and pre.meta["disaster_type"] == "flooding"
    assert pre.meta["gsd"] == 2.0 and pre.meta["sun_elevation"] == 50.0
    assert pre.mask is not None and pre.mask.dtype == np.uint8
    assert set(np.unique(pre.mask)) == {0, 1}
    assert pre.mask[15, 15] == 1 and pre.mask[48, 45] == 1 and pre.mask[30, 30] == 0
    np.testing.assert_array_equal(pre.mask, post.mask)
    assert other.mask is not None and other.mask.sum() == 0


def test_damage_comes_from_subtype_and_is_none_before_the_disaster(xbd_root: Path) -> None:
    post, pre, _ = iter_xbd(xbd_root)
    assert [b.damage for b in post.buildings] == ["destroyed", "no-damage"]
    assert [b.damage for b in pre.buildings] == [None, None]
    assert [b.uid for b in pre.buildings] == ["b1", "b2"]
    assert pre.buildings[0].polygon == ((10, 10), (20, 10), (20, 20), (10, 20))


def test_list_xbd_gives_paired_stems(xbd_root: Path) -> None:
    (xbd_root / "labels" / "orphan.json").write_text("{}")
    assert list_xbd(xbd_root) == [
        "flood_00000001_post_disaster",
        "flood_00000001_pre_disaster",
        "flood_00000002_pre_disaster",
    ]


def test_multipolygon_and_holes_are_rasterised(tmp_path: Path) -> None:
    wkt = (
        "MULTIPOLYGON (((4 4, 30 4, 30 30, 4 30, 4 4), (12 12, 22 12, 22 22, 12 22, 12 12)),"
        " ((40 40, 50 40, 50 50, 40 50, 40 40)))"
    )
    write_scene(tmp_path, "x_pre_disaster", [feature(wkt, "m1")])
    (scene,) = iter_xbd(tmp_path)
    assert scene.mask[6, 6] == 1  # ring of the first part
    assert scene.mask[17, 17] == 0  # its hole
    assert scene.mask[45, 45] == 1  # second part
    assert len(scene.buildings) == 1  # one building, outline = largest part


def test_hole_does_not_erase_a_building_inside_it(tmp_path: Path) -> None:
    courtyard = "POLYGON ((4 4, 40 4, 40 40, 4 40, 4 4), (10 10, 34 10, 34 34, 10 34, 10 10))"
    inner = square(18, 18, 26, 26)
    write_scene(tmp_path, "c_pre_disaster", [feature(inner, "in"), feature(courtyard, "out")])
    (scene,) = iter_xbd(tmp_path)
    assert scene.mask[22, 22] == 1 and scene.mask[14, 14] == 0 and scene.mask[6, 6] == 1


def test_polygon_within_one_pixel_tolerance_is_accepted(tmp_path: Path) -> None:
    write_scene(tmp_path, "t_pre_disaster", [feature(square(-0.9, 50, 10, SIZE + 0.9), "edge")])
    (scene,) = iter_xbd(tmp_path)
    assert scene.mask[60, 0] == 1


def skipped_for(root: Path) -> tuple[list, LoadReport]:
    report = LoadReport()
    scenes = list(iter_xbd(root, report))
    return scenes, report


@pytest.mark.parametrize(
    ("label_obj", "expected"),
    [
        ({"metadata": {}}, r"no 'features\.xy' list"),
        ({"metadata": {}, "features": {"lng_lat": []}}, r"no 'features\.xy' list"),
        ({"metadata": {}, "features": []}, r"no 'features\.xy' list"),
        ("{not json", r"invalid JSON"),
        ([1, 2], r"expected a JSON object"),
        (label("s", [feature("POLYGON ((1 2, 3", "w")]), r"unparsable WKT"),
        (label("s", [feature("LINESTRING (1 2, 3 4)", "w")]), r"unparsable WKT"),
        (label("s", [feature(square(10, 10, 80, 20), "far")]), r"outside the 64x64 image"),
        (label("s", [feature(square(-5, 10, 8, 20), "neg")]), r"outside the 64x64 image"),
        (label("s", [feature(square(1, 1, 9, 9), "u", "burnt")]), r"unknown damage subtype"),
        (label("s", [], size=128), r"metadata\.width = 128"),
    ],
)
def test_bad_label_skips_the_scene_and_names_the_file(
    tmp_path: Path, label_obj: Any, expected: str
) -> None:
    write_scene(tmp_path, "good_pre_disaster", [])
    write_scene(tmp_path, "s_post_disaster", label_obj=label_obj)
    scenes, report = skipped_for(tmp_path)
    assert [s.scene_id for s in scenes] == ["good_pre_disaster"]
    assert report.loaded == 1 and len(report.skipped) == 1
    file, reason = report.skipped[0]
    assert file.endswith("s_post_disaster.json")
    assert "s_post_disaster" in reason
    assert re.search(expected, reason), reason


def test_polygon_outside_names_the_building(tmp_path: Path) -> None:
    write_scene(tmp_path, "o_pre_disaster", [feature(square(60, 60, 70, 70), "uid-out")])
    with pytest.raises(
        DatasetError, match=r"o_pre_disaster\.json.*uid-out.*outside.*tolerance 1 px"
    ):
        read_xbd_scene(
            tmp_path / "images" / "o_pre_disaster.png", tmp_path / "labels" / "o_pre_disaster.json"
        )


def test_image_missing_for_label_and_label_missing_for_image_are_counted(tmp_path: Path) -> None:
    write_scene(tmp_path, "a_pre_disaster", [])
    write_scene(tmp_path, "b_pre_disaster", [])
    write_scene(tmp_path, "c_pre_disaster", [])
    (tmp_path / "images" / "b_pre_disaster.png").unlink()
    (tmp_path / "labels" / "c_pre_disaster.json").unlink()
    scenes, report = skipped_for(tmp_path)
    assert [s.scene_id for s in scenes] == ["a_pre_disaster"]
    reasons = dict(report.skipped)
    assert len(reasons) == 2
    label_file = str(tmp_path / "labels" / "b_pre_disaster.json")
    image_file = str(tmp_path / "images" / "c_pre_disaster.png")
    assert "no image for this label" in reasons[label_file]
    assert "no label for this image" in reasons[image_file]
    assert count_xbd(tmp_path) == len(scenes) + len(report.skipped) == 3


def test_two_images_with_one_stem_are_ambiguous(tmp_path: Path) -> None:
    write_scene(tmp_path, "a_pre_disaster", [])
    write_scene(tmp_path, "d_pre_disaster", [])
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "images" / "d_pre_disaster.jpg")
    scenes, report = skipped_for(tmp_path)
    assert len(scenes) == 1
    assert "ambiguous" in report.skipped[0][1]


def test_unreadable_image_is_skipped_with_its_name(tmp_path: Path) -> None:
    write_scene(tmp_path, "a_pre_disaster", [])
    write_scene(tmp_path, "z_pre_disaster", [])
    (tmp_path / "images" / "z_pre_disaster.png").write_bytes(b"")
    scenes, report = skipped_for(tmp_path)
    assert len(scenes) == 1
    assert "z_pre_disaster.png: file is empty" in report.skipped[0][1]


def test_without_report_skips_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_scene(tmp_path, "a_pre_disaster", [])
    write_scene(tmp_path, "b_pre_disaster", label_obj={"metadata": {}})
    with caplog.at_level(logging.WARNING, logger="app.data.xbd"):
        scenes = list(iter_xbd(tmp_path))
    assert len(scenes) == 1
    assert "b_pre_disaster.json" in caplog.text


def test_empty_or_incomplete_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        iter_xbd(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"labels: folder missing"):
        iter_xbd(tmp_path)
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match=r"no xBD scenes found.*empty"):
        iter_xbd(tmp_path)
    (tmp_path / "labels" / "x.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"no xBD scenes found.*x\.json"):
        iter_xbd(tmp_path)


def test_iteration_is_lazy(xbd_root: Path) -> None:
    scenes = iter_xbd(xbd_root)
    first = next(scenes)
    assert first.scene_id == "flood_00000001_post_disaster"


def test_parse_wkt_variants() -> None:
    assert parse_wkt("POLYGON EMPTY") == []
    assert parse_wkt("polygon Z ((0 0 1, 4 0 1, 4 4 1, 0 0 1))") == [[[(0, 0), (4, 0), (4, 4)]]]
    assert parse_wkt("POLYGON((0 0,1e1 0,10 10,0 0))") == [[[(0, 0), (10, 0), (10, 10)]]]
    for bad in [
        "",
        "POINT (1 2)",
        "POLYGON ((0 0, 1 1))",
        "POLYGON ((0 0, 1 1, 2 x))",
        "POLYGON ((0 0, 4 0, 4 4, 0 0)) junk",
        "POLYGON (0 0, 4 0, 4 4)",
    ]:
        with pytest.raises(ValueError):
            parse_wkt(bad)


# ------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_xbd_native_scenes() -> None:
    root = config.SHARED_DATA / "xbd-native"
    if not (root / "images").is_dir():
        pytest.skip(f"shared xBD data not found at {root}: real-data test skipped")
    report = LoadReport()
    scenes = list(iter_xbd(root, report))
    assert report.skipped == []
    assert len(scenes) == len(list_xbd(root)) >= 2
    groups: dict[str, set[str]] = {}
    for scene in scenes:
        assert scene.image.shape == (1024, 1024, 3)
        assert scene.mask is not None and scene.mask.mean() > 0
        assert scene.buildings
        groups.setdefault(scene.group, set()).add(scene.meta["phase"])
        if scene.meta["phase"] == "pre":
            assert all(b.damage is None for b in scene.buildings)
    assert all(phases == {"pre", "post"} for phases in groups.values())
