"""The on-disk tile dataset written by ``python -m app make-dataset`` and read by training,
embedding extraction and the dashboard.

Layout (format ``unet-lens-tiles/1``)::

    <out>/manifest.json      name, source, created, params, counts, skipped, versions
    <out>/tiles.parquet      one row per tile (ids, split, position, label stats, scene meta)
    <out>/images/<tile_id>.png   RGB uint8
    <out>/masks/<tile_id>.png    L uint8 0/255, only for scenes with a mask

Decisions:

* Written atomically (:func:`app.fsutil.atomic_dir`): readers see the old or the new dataset.
* Scenes are streamed: one scene and its tiles in memory at a time, plus one small row per tile.
* Splits are assigned per ``group`` once every scene is seen (:func:`split_groups`), so pre- and
  post-disaster tiles of one location never straddle train and test.
* Scene meta keys become columns as-is; a key that collides with a core column is stored as
  ``meta_<key>``; a column mixing incompatible types is stored as strings.
* Scene ids must be usable as file names (no path separators, no leading dot), since tile ids
  become file names; the reader re-checks every id and only builds paths from ids in the table.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import PIL
import pyarrow
from PIL import Image
from tqdm.auto import tqdm

from app.data.base import DAMAGE_CLASSES, DatasetError, LoadReport, Scene
from app.data.tiling import SPLITS, check_fractions, check_int, split_groups, tile_scene
from app.fsutil import atomic_dir

FORMAT = "unet-lens-tiles/1"
MANIFEST = "manifest.json"
TABLE = "tiles.parquet"

DAMAGE_COLUMNS: dict[str, str] = {c: "dmg_" + c.replace("-", "_") for c in DAMAGE_CLASSES}
CORE_COLUMNS: tuple[str, ...] = (
    "tile_id",
    "scene_id",
    "group",
    "split",
    "source",
    "x",
    "y",
    "size",
    "has_mask",
    "building_fraction",
    "building_count",
    *DAMAGE_COLUMNS.values(),
)
_REQUIRED = ("tile_id", "scene_id", "group", "split", "x", "y", "size", "has_mask")


def write_dataset(
    scenes: Iterable[Scene],
    out: Path,
    *,
    name: str,
    source: str,
    tile_size: int = 256,
    overlap: int = 0,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    report: LoadReport | None = None,
    progress: bool = True,
    params: dict[str, Any] | None = None,
    total: int | None = None,
) -> Path:
    """Tile ``scenes`` into a dataset folder at ``out`` (replaced atomically) and return it.

    Pass the same ``report`` that the loader fills, so its skipped files land in the manifest.
    ``total`` is how many scenes a lazy ``scenes`` will yield plus how many files its loader
    will skip into ``report`` (default: ``len(scenes)`` when it has one), so the progress bar
    shows a total and an ETA rather than a bare count.
    Raises :class:`DatasetError` when no scene was written.
    """
    check_int("tile_size", tile_size, low=1)
    check_int("overlap", overlap, low=0, high=tile_size, high_text="[0, tile_size)")
    check_int("seed", seed)
    fr = check_fractions(fractions)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"The 'name' parameter must be a non-empty str. Got {name!r} instead.")
    out = Path(out)
    report = report if report is not None else LoadReport()
    if total is None and hasattr(scenes, "__len__"):
        total = len(scenes)  # type: ignore[arg-type]

    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        bar = tqdm(total=total, desc=f"tiling {name}", unit="scene", disable=not progress)
        counted = len(report.skipped)
        for scene in scenes:
            _check_scene_id(scene.scene_id, seen)
            for tile in tile_scene(scene, tile_size, overlap):
                Image.fromarray(tile.image).save(
                    tmp / "images" / f"{tile.tile_id}.png", format="PNG", compress_level=1
                )
                if tile.mask is not None:
                    Image.fromarray((tile.mask > 0).astype(np.uint8) * 255, mode="L").save(
                        tmp / "masks" / f"{tile.tile_id}.png", format="PNG"
                    )
                rows.append(_row(tile, scene.source))
            # Files the loader skipped on the way count as done too, so the bar ends full.
            bar.update(1 + len(report.skipped) - counted)
            counted = len(report.skipped)
        bar.update(len(report.skipped) - counted)
        bar.close()
        if not rows:
            raise DatasetError(
                f"{out}: no scene to write ({len(report.skipped)} skipped). {report.summary()}"
            )
        assignment = split_groups([r["group"] for r in rows], seed, fr)
        for row in rows:
            row["split"] = assignment[row["group"]]
        table = _table(rows)
        table.to_parquet(tmp / TABLE, index=False)
        counts = {
            "scenes": len(seen),
            "tiles": len(table),
            **{s: int((table["split"] == s).sum()) for s in SPLITS},
            "skipped": len(report.skipped),
            "groups": len(assignment),
        }
        manifest = {
            "format": FORMAT,
            "name": name,
            "source": source,
            "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "params": {
                **(params or {}),
                "tile_size": tile_size,
                "overlap": overlap,
                "seed": seed,
                "fractions": list(fr),
            },
            "counts": counts,
            "skipped": [[file, reason] for file, reason in report.skipped],
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "pillow": PIL.__version__,
                "pandas": pd.__version__,
                "pyarrow": pyarrow.__version__,
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return out


def _check_scene_id(scene_id: str, seen: set[str]) -> None:
    if not safe_name(scene_id):
        raise DatasetError(
            f"Scene id {scene_id!r} cannot be used in file names; expected no '/', '\\', NUL "
            f"or leading '.'."
        )
    if scene_id in seen:
        raise DatasetError(f"Scene id {scene_id!r} appears twice; expected unique scene ids.")
    seen.add(scene_id)


def safe_name(text: Any) -> bool:
    """True when ``text`` is a plain file-name component (no traversal, no hidden files)."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= 200
        and not text.startswith(".")
        and not any(c in text for c in "/\\\x00")
        and Path(text).name == text
    )


def _row(tile: Any, source: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tile_id": tile.tile_id,
        "scene_id": tile.scene_id,
        "group": tile.group,
        "split": "",
        "source": source,
        "x": tile.x,
        "y": tile.y,
        "size": tile.size,
        "has_mask": tile.mask is not None,
        "building_fraction": float(tile.mask.mean()) if tile.mask is not None else float("nan"),
        "building_count": tile.building_count,
    }
    for cls, column in DAMAGE_COLUMNS.items():
        row[column] = int(tile.damage_counts.get(cls, 0))
    for key, value in tile.meta.items():
        column = f"meta_{key}" if key in CORE_COLUMNS else str(key)
        if isinstance(value, np.generic):
            value = value.item()
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = json.dumps(value, default=str)  # Scene.meta should be flat; keep it lossless
        row[column] = value
    return row


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame.from_records(rows)
    for column in table.columns[len(CORE_COLUMNS) :]:
        kinds = {_kind(v) for v in table[column] if v is not None and v == v}
        if len(kinds) > 1:
            table[column] = [None if v is None or v != v else str(v) for v in table[column]]
    return table


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


class TileDataset:
    """Read access to a dataset folder; every file path is derived from a validated tile id."""

    def __init__(self, path: Path, manifest: dict[str, Any], table: pd.DataFrame) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.table = table
        self._rows: dict[str, int] = {tid: i for i, tid in enumerate(table["tile_id"])}

    @classmethod
    def open(cls, path: Path) -> TileDataset:
        """Open and check a dataset folder; :class:`DatasetError` says what is missing or wrong."""
        path = Path(path)
        manifest_path, table_path = path / MANIFEST, path / TABLE
        if not path.is_dir():
            raise DatasetError(f"{path}: not a dataset folder; expected a make-dataset output.")
        if not manifest_path.is_file():
            raise DatasetError(f"{manifest_path}: missing; expected a make-dataset output folder.")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise DatasetError(f"{manifest_path}: unreadable ({exc}); expected JSON.") from exc
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != FORMAT:
            raise DatasetError(
                f"{manifest_path}: unknown format {found!r}; expected {FORMAT!r} "
                f"(rebuild the dataset with `python -m app make-dataset`)."
            )
        if not table_path.is_file():
            raise DatasetError(f"{table_path}: missing; the dataset is incomplete.")
        try:
            table = pd.read_parquet(table_path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on bad files
            raise DatasetError(f"{table_path}: unreadable parquet ({exc}).") from exc
        missing = [c for c in _REQUIRED if c not in table.columns]
        if missing:
            raise DatasetError(f"{table_path}: missing columns {missing}; expected {_REQUIRED}.")
        bad = [t for t in table["tile_id"] if not safe_name(t)]
        if bad:
            raise DatasetError(f"{table_path}: invalid tile ids, e.g. {bad[0]!r}.")
        if table["tile_id"].duplicated().any():
            dup = table.loc[table["tile_id"].duplicated(), "tile_id"].iloc[0]
            raise DatasetError(f"{table_path}: tile id {dup!r} appears twice.")
        return cls(path, manifest, table)

    def __len__(self) -> int:
        return len(self.table)

    def ids(self, split: str | None = None) -> list[str]:
        """Tile ids in table order, optionally of one split."""
        return [str(t) for t in self._select(split)["tile_id"]]

    def paths(self, split: str | None = None) -> tuple[list[str], list[str]]:
        """Aligned image and mask paths (for a tf.data pipeline); mask is ``""`` for unlabelled
        tiles so the lists stay aligned and callers decide how to treat them."""
        rows = self._select(split)
        images = [str(self.path / "images" / f"{t}.png") for t in rows["tile_id"]]
        masks = [
            str(self.path / "masks" / f"{t}.png") if has else ""
            for t, has in zip(rows["tile_id"], rows["has_mask"], strict=True)
        ]
        return images, masks

    def image(self, tile_id: str) -> np.ndarray:
        """(size, size, 3) uint8 RGB of a tile."""
        row = self._row(tile_id)
        return np.asarray(self._read(self.path / "images" / f"{tile_id}.png", row).convert("RGB"))

    def mask(self, tile_id: str) -> np.ndarray | None:
        """(size, size) uint8 {0, 1} mask of a tile, ``None`` when its scene had no labels."""
        row = self._row(tile_id)
        if not bool(row["has_mask"]):
            return None
        im = self._read(self.path / "masks" / f"{tile_id}.png", row)
        return (np.asarray(im.convert("L")) > 0).astype(np.uint8)

    def _select(self, split: str | None) -> pd.DataFrame:
        if split is None:
            return self.table
        if split not in SPLITS:
            raise ValueError(
                f"The 'split' parameter must be one of {list(SPLITS)} or None. Got {split!r} instead."
            )
        return self.table[self.table["split"] == split]

    def _row(self, tile_id: str) -> pd.Series:
        index = self._rows.get(tile_id) if isinstance(tile_id, str) else None
        if index is None:
            raise KeyError(f"Unknown tile id {tile_id!r} in dataset {self.path}.")
        return self.table.iloc[index]

    def _read(self, file: Path, row: pd.Series) -> Image.Image:
        size = int(row["size"])
        try:
            with Image.open(file, formats=("PNG",)) as im:
                if im.size != (size, size):
                    raise DatasetError(
                        f"{file}: tile is {im.size[0]}x{im.size[1]}; expected {size}x{size}."
                    )
                im.load()
                return im.copy()
        except FileNotFoundError:
            raise DatasetError(f"{file}: missing; the dataset is incomplete.") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{file}: unreadable tile ({exc}).") from exc
