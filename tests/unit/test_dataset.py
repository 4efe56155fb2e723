"""Tile dataset writer/reader and the atomic file helpers it relies on."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.data.base import Building, DatasetError, LoadReport, Scene
from app.data.dataset import FORMAT, TileDataset, write_dataset
from app.fsutil import atomic_dir, sha256_file, write_bytes_atomic

TILE = 32


def make_scene(scene_id: str, group: str, *, mask: bool = True, meta: dict | None = None) -> Scene:
    rng = np.random.default_rng(zlib.crc32(scene_id.encode()))
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    m = None
    if mask:
        m = np.zeros((64, 96), np.uint8)
        m[4:20, 4:20] = 1
    buildings = [Building("b1", ((4, 4), (20, 4), (20, 20), (4, 20)), "destroyed")]
    return Scene(scene_id, "test", image, m, buildings, meta or {"phase": "pre"}, group)


def scenes(n_groups: int = 5) -> Iterator[Scene]:
    """Lazy pre/post pairs per location, like xBD."""
    for i in range(n_groups):
        yield make_scene(f"loc{i}_pre_disaster", f"loc{i}", meta={"phase": "pre", "gsd": 1.5})
        yield make_scene(f"loc{i}_post_disaster", f"loc{i}", meta={"phase": "post", "gsd": 1.6})


def write(out: Path, items, **kwargs) -> Path:
    kwargs.setdefault("tile_size", TILE)
    return write_dataset(items, out, name="t", source="test", progress=False, **kwargs)


def test_write_and_open_round_trip(tmp_path: Path) -> None:
    report = LoadReport(skipped=[("bad.png", "file is empty")])
    out = write(tmp_path / "ds", scenes(), report=report, seed=3, params={"source_root": "/x"})
    ds = TileDataset.open(out)
    m = ds.manifest
    assert m["format"] == FORMAT and m["name"] == "t" and m["source"] == "test"
    assert m["created"].endswith("+00:00")
    assert m["params"] == {
        "source_root": "/x",
        "tile_size": TILE,
        "overlap": 0,
        "seed": 3,
        "fractions": [0.7, 0.15, 0.15],
    }
    assert m["counts"]["scenes"] == 10 and m["counts"]["tiles"] == 10 * 6 == len(ds)
    assert sum(m["counts"][s] for s in ("train", "val", "test")) == 60
    assert m["counts"]["skipped"] == 1 and m["skipped"] == [["bad.png", "file is empty"]]
    assert set(m["versions"]) == {"python", "numpy", "pillow", "pandas", "pyarrow"}

    table = ds.table
    for column in ("tile_id", "scene_id", "group", "split", "source", "x", "y", "size",
                   "has_mask", "building_fraction", "building_count", "dmg_no_damage",
                   "dmg_minor_damage", "dmg_major_damage", "dmg_destroyed",
                   "dmg_un_classified", "phase", "gsd"):  # fmt: skip
        assert column in table.columns, column
    first = table.set_index("tile_id").loc["loc0_pre_disaster_x00000_y00000"]
    assert first["building_count"] == 1 and first["dmg_destroyed"] == 1
    assert first["building_fraction"] == pytest.approx(16 * 16 / TILE**2)
    assert first["phase"] == "pre" and first["gsd"] == 1.5

    scene = make_scene("loc0_pre_disaster", "loc0")
    np.testing.assert_array_equal(
        ds.image("loc0_pre_disaster_x00032_y00032"), scene.image[32:64, 32:64]
    )
    np.testing.assert_array_equal(ds.mask("loc0_pre_disaster_x00000_y00000"), scene.mask[:32, :32])


def test_groups_never_straddle_splits(tmp_path: Path) -> None:
    ds = TileDataset.open(write(tmp_path / "ds", scenes(12), seed=1))
    per_group = ds.table.groupby("group")["split"].nunique()
    assert (per_group == 1).all()
    assert set(ds.table["split"]) == {"train", "val", "test"}
    pairs = ds.table.groupby(
        ds.table["scene_id"].str.replace(r"_(pre|post)_disaster", "", regex=True)
    )
    assert (pairs["split"].nunique() == 1).all()


def test_split_is_reproducible(tmp_path: Path) -> None:
    a = TileDataset.open(write(tmp_path / "a", scenes(8), seed=4)).table
    b = TileDataset.open(write(tmp_path / "b", list(scenes(8))[::-1], seed=4)).table
    merged = a.set_index("tile_id")["split"].sort_index()
    assert merged.equals(b.set_index("tile_id")["split"].sort_index())


def test_paths_and_ids_per_split(tmp_path: Path) -> None:
    items = [make_scene("lab", "g1"), make_scene("nolab", "g2", mask=False), make_scene("c", "g3")]
    ds = TileDataset.open(write(tmp_path / "ds", items))
    images, masks = ds.paths()
    assert len(images) == len(masks) == len(ds) == 18
    for image, mask, tid in zip(images, masks, ds.ids(), strict=True):
        assert Path(image) == tmp_path / "ds" / "images" / f"{tid}.png" and Path(image).is_file()
        if tid.startswith("nolab"):
            assert mask == ""
            assert ds.mask(tid) is None
        else:
            assert Path(mask).is_file()
    assert not any((tmp_path / "ds" / "masks").glob("nolab*"))
    total = 0
    for split in ("train", "val", "test"):
        split_images, _ = ds.paths(split)
        assert len(split_images) == len(ds.ids(split))
        total += len(split_images)
    assert total == 18
    with pytest.raises(ValueError, match="The 'split' parameter must be one of"):
        ds.paths("training")


def test_unknown_or_unsafe_tile_ids_are_key_errors(tmp_path: Path) -> None:
    ds = TileDataset.open(write(tmp_path / "ds", [make_scene("a", "g")]))
    for bad in ["nope", "../manifest", "/etc/passwd", "a_x00000_y00000.png"]:
        with pytest.raises(KeyError, match="Unknown tile id"):
            ds.image(bad)
        with pytest.raises(KeyError, match="Unknown tile id"):
            ds.mask(bad)


def test_open_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a dataset folder"):
        TileDataset.open(tmp_path / "absent")
    out = write(tmp_path / "ds", [make_scene("a", "g")])
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "tiles.parquet").rename(tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=r"tiles\.parquet: missing"):
        TileDataset.open(out)
    (tmp_path / "t.parquet").rename(out / "tiles.parquet")
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(DatasetError, match=r"unknown format 'other/9'"):
        TileDataset.open(out)
    (out / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=r"manifest\.json: missing"):
        TileDataset.open(out)


def test_tampered_table_ids_are_refused(tmp_path: Path) -> None:
    out = write(tmp_path / "ds", [make_scene("a", "g")])
    table = pd.read_parquet(out / "tiles.parquet")
    table.loc[0, "tile_id"] = "../../outside"
    table.to_parquet(out / "tiles.parquet", index=False)
    with pytest.raises(DatasetError, match="invalid tile ids"):
        TileDataset.open(out)


def test_missing_tile_file_is_a_dataset_error(tmp_path: Path) -> None:
    ds = TileDataset.open(write(tmp_path / "ds", [make_scene("a", "g")]))
    tid = ds.ids()[0]
    (tmp_path / "ds" / "images" / f"{tid}.png").unlink()
    with pytest.raises(DatasetError, match=rf"{tid}\.png: missing"):
        ds.image(tid)


def test_meta_columns_collisions_and_mixed_types(tmp_path: Path) -> None:
    items = [
        make_scene("a", "g1", meta={"split": "mine", "zone": 3}),
        make_scene("b", "g2", meta={"zone": "north"}),
    ]
    table = TileDataset.open(write(tmp_path / "ds", items)).table
    assert "meta_split" in table.columns and set(table["split"]) <= {"train", "val", "test"}
    assert set(table["zone"]) == {"3", "north"}


def test_bad_scene_ids_and_duplicates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot be used in file names"):
        write(tmp_path / "ds", [make_scene("../evil", "g")])
    with pytest.raises(DatasetError, match="appears twice"):
        write(tmp_path / "ds", [make_scene("a", "g"), make_scene("a", "g")])
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []


def test_no_scenes_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    report = LoadReport(skipped=[("x.png", "broken")])
    with pytest.raises(DatasetError, match=r"no scene to write \(1 skipped\)"):
        write(tmp_path / "ds", iter([]), report=report)
    assert list(tmp_path.iterdir()) == []


def test_arguments_are_validated_before_writing(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"The 'overlap' parameter must be an int in \[0, tile_size\)"
    ):
        write(tmp_path / "ds", scenes(), overlap=TILE)
    with pytest.raises(ValueError, match="The 'fractions' parameter"):
        write(tmp_path / "ds", scenes(), fractions=(1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    out = write(tmp_path / "ds", [make_scene("old", "g")])
    write(out, [make_scene("new", "g")])
    ds = TileDataset.open(out)
    assert set(ds.table["scene_id"]) == {"new"}
    assert not any((out / "images").glob("old*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .tmp-* / .old-* left


def test_exception_mid_write_keeps_the_old_dataset(tmp_path: Path) -> None:
    out = write(tmp_path / "ds", [make_scene("old", "g")])
    before = {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()}

    def exploding() -> Iterator[Scene]:
        yield make_scene("new1", "g1")
        yield make_scene("new2", "g2")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write(out, exploding())
    after = {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert set(TileDataset.open(out).table["scene_id"]) == {"old"}


# ----------------------------------------------------------------------------------------- fsutil


def test_atomic_dir_commits_and_cleans_up(tmp_path: Path) -> None:
    final = tmp_path / "run"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-run-")
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(KeyError), atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("2")
        raise KeyError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_write_bytes_atomic_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"
    write_bytes_atomic(path, b"hello")
    write_bytes_atomic(path, b"hello world")
    assert path.read_bytes() == b"hello world"
    assert list(path.parent.iterdir()) == [path]
    assert sha256_file(path) == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


def test_progress_bar_of_lazy_scenes_shows_the_given_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dataset(scenes(2), tmp_path / "a", name="t", source="test", tile_size=TILE, total=4)
    assert "4/4" in capsys.readouterr().err
    write_dataset(scenes(2), tmp_path / "b", name="t", source="test", tile_size=TILE)
    err = capsys.readouterr().err
    assert "4scene" in err and "/4" not in err  # a bare count without a total


def test_progress_bar_counts_the_files_the_loader_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = LoadReport(skipped=[("old.png", "skipped before")])

    def loader() -> Iterator[Scene]:
        report.skip("orphan.png", "mask missing")  # like a loader's orphans, before any scene
        yield from scenes(1)
        report.skip("bad.png", "file is empty")  # a pair that fails after the last scene

    write_dataset(
        loader(), tmp_path / "a", name="t", source="test", tile_size=TILE, report=report, total=4
    )
    err = capsys.readouterr().err
    assert "4/4" in err and "5/4" not in err
