"""Image+mask folder loader on small folders written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from app.data.base import DatasetError, LoadReport
from app.data.folders import buildings_from_mask, count_folder, iter_folder, list_folder

RNG = np.random.default_rng(1)


def write_pair(
    root: Path,
    stem: str,
    *,
    size: tuple[int, int] = (48, 64),
    mask_size: tuple[int, int] | None = None,
    image_ext: str = ".png",
    mask_ext: str = ".png",
) -> np.ndarray:
    """Write an image and a 0/255 mask with two rectangles; return the {0,1} mask."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    rgb = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if image_ext in (".tif", ".tiff"):
        tifffile.imwrite(root / "images" / f"{stem}{image_ext}", rgb, photometric="rgb")
    else:
        Image.fromarray(rgb).save(root / "images" / f"{stem}{image_ext}")
    mh, mw = mask_size or size
    mask = np.zeros((mh, mw), np.uint8)
    mask[4:12, 4:20] = 1
    mask[30:40, 40:50] = 1
    if mask_ext in (".tif", ".tiff"):
        tifffile.imwrite(root / "masks" / f"{stem}{mask_ext}", mask * 255)
    else:
        Image.fromarray(mask * 255).save(root / "masks" / f"{stem}{mask_ext}")
    return mask


def test_pairs_by_stem_whatever_the_extensions(tmp_path: Path) -> None:
    mask_a = write_pair(tmp_path, "austin1", image_ext=".tiff", mask_ext=".tif")
    write_pair(tmp_path, "chicago2", image_ext=".jpg", mask_ext=".png")
    report = LoadReport()
    scenes = list(iter_folder(tmp_path, report))
    assert [s.scene_id for s in scenes] == ["austin1", "chicago2"]
    assert report.loaded == 2 and report.skipped == []
    austin = scenes[0]
    assert austin.source == "folder" and austin.group == "austin1"
    assert austin.image.shape == (48, 64, 3) and austin.image.dtype == np.uint8
    np.testing.assert_array_equal(austin.mask, mask_a)
    assert list_folder(tmp_path) == ["austin1", "chicago2"]


def test_scaling_notes_reach_the_meta(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    gray16 = RNG.integers(0, 5000, (32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "images" / "g.tif", gray16)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "masks" / "g.png")
    (scene,) = iter_folder(tmp_path)
    assert scene.meta["scaling"] == "percentile 2-98 stretch from uint16"


def test_buildings_are_derived_from_mask_components(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    (scene,) = iter_folder(tmp_path)
    assert len(scene.buildings) == 2
    assert all(b.damage is None for b in scene.buildings)
    xs = sorted(np.mean([p[0] for p in b.polygon]) for b in scene.buildings)
    assert 8 < xs[0] < 16 and 40 < xs[1] < 50  # centres of the two rectangles (x 4-20, 40-50)


def test_buildings_from_mask_single_pixels_and_touching_diagonals() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[1, 1] = 1
    mask[5, 5] = mask[6, 6] = 1  # 8-connected: one building
    buildings = buildings_from_mask(mask, "s")
    assert len(buildings) == 2
    assert all(len(b.polygon) >= 3 for b in buildings)


def test_mask_missing_is_skipped_and_counted(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "masks" / "b.png").unlink()
    report = LoadReport()
    scenes = list(iter_folder(tmp_path, report))
    assert [s.scene_id for s in scenes] == ["a"]
    assert len(report.skipped) == 1
    file, reason = report.skipped[0]
    assert file == str(tmp_path / "images" / "b.png")
    assert "mask missing" in reason
    assert count_folder(tmp_path) == len(scenes) + len(report.skipped) == 2


def test_mask_without_image_is_skipped_and_counted(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    Image.new("L", (48, 64)).save(tmp_path / "masks" / "lonely.png")
    report = LoadReport()
    assert len(list(iter_folder(tmp_path, report))) == 1
    assert report.skipped[0][0] == str(tmp_path / "masks" / "lonely.png")


def test_mask_of_other_size_is_skipped_with_the_mask_named(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b", mask_size=(32, 32))
    report = LoadReport()
    scenes = list(iter_folder(tmp_path, report))
    assert [s.scene_id for s in scenes] == ["a"]
    reason = report.skipped[0][1]
    assert str(tmp_path / "masks" / "b.png") in reason
    assert "mask is 32x32" in reason and "image is 64x48" in reason


def test_unreadable_image_is_skipped_with_its_name(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "images" / "b.png").write_bytes(b"garbage, not a png")
    report = LoadReport()
    scenes = list(iter_folder(tmp_path, report))
    assert len(scenes) == 1
    assert f"{tmp_path / 'images' / 'b.png'}: not a recognised image" in report.skipped[0][1]


def test_empty_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match=rf"{tmp_path}: no image/mask pairs.*empty"):
        iter_folder(tmp_path)


def test_no_pairs_at_all_raises(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"no image/mask pairs.*a\.png: mask missing"):
        iter_folder(tmp_path)


def test_missing_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        iter_folder(tmp_path / "absent")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"masks: folder missing"):
        iter_folder(tmp_path)


def test_hidden_and_foreign_files_are_ignored(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "images" / "readme.txt").write_text("hi")
    report = LoadReport()
    assert len(list(iter_folder(tmp_path, report))) == 1
    assert report.skipped == []
