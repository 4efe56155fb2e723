"""The Evaluate page's back end: which tiles, one cached model pass, and the page's tables.

**Evaluation set**: the embeddings run's tiles of split ``test`` that have ground truth (all
tiles with truth when the run has no test split), at most :data:`MAX_TILES` of them (a seeded
sample beyond that, said on the page).

**One pass**: :func:`run_evaluation` scores the model on those tiles with
:func:`app.ml.evaluate.evaluate_tiles` (counts only; any threshold afterwards). The page stores
the result in the shared flask-caching cache under (run, run version, model SHA-256), so the
pass runs once per model and run.

**Resolution**: with the run's dataset on disk, the lossless tile and its full-resolution mask
are used; otherwise the run's stored JPEG tile and stored (thumbnail-size) truth mask, the
probability map being area-averaged down to the mask's size (said on the page).

**Whole scenes**: with the run's dataset on disk, the headline scores (cards, curves, confusion
matrix, per-disaster table) come from :func:`app.ml.evaluate.evaluate_dataset` on its test
scenes (all scenes when it has no test split): each scene stitched from its tiles and every scene
pixel counted once, the very numbers ``python -m app evaluate`` prints. The per-tile table and
the damage-class recall stay per tile. Without the dataset, everything is per tile.

**Damage classes**: tiles store per-class building counts (``dmg_*``) but not which ground-truth
instance has which class, so recall per damage class is approximated as the count-weighted mean
of the tiles' building recall: ``sum_t dmg_c(t) · recall(t) / sum_t dmg_c(t)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ml.evaluate import (
    BREAKDOWNS,
    DatasetScore,
    Evaluation,
    building_index,
    evaluate_dataset,
    evaluate_tiles,
    ratios,
    tile_confusion,
)
from app.web import runs

if TYPE_CHECKING:  # pragma: no cover
    from app.artifacts import EmbeddingsRun
    from app.ml.inference import ModelService

#: At most this many tiles are evaluated (a seeded sample beyond); ``$UNET_LENS_EVAL_MAX_TILES``.
MAX_TILES = int(os.environ.get("UNET_LENS_EVAL_MAX_TILES", "1000"))
#: The whole-scene pass runs on the page only up to this many tiles (beyond, the page says to run
#: ``python -m app evaluate``); ``$UNET_LENS_EVAL_MAX_SCENE_TILES``.
MAX_SCENE_TILES = int(os.environ.get("UNET_LENS_EVAL_MAX_SCENE_TILES", "4000"))
#: Part of the cache key: bumped when :class:`~app.ml.evaluate.Evaluation` changes.
CACHE_VERSION = 2


def cache_key(run_id: str, version: str, model_sha: str) -> str:
    return f"evaluation:{CACHE_VERSION}:{run_id}:{version}:{model_sha[:20]}"


# --------------------------------------------------------------------------- whole scenes


def scene_source(run: EmbeddingsRun, max_tiles: int | None = None
                 ) -> tuple[Any, tuple[str, ...] | None, int] | None:
    """``(dataset, splits, n tiles)`` the run's scenes are scored on (its test split, else every
    split), or None when the run's dataset is not on disk or has no ground truth. ``n tiles``
    above ``max_tiles`` (default :data:`MAX_SCENE_TILES`) means: too many to score here."""
    dataset = runs.tile_dataset(run)
    if dataset is None:
        return None
    table = dataset.table
    labelled = table["has_mask"].astype(bool).to_numpy()
    if not labelled.any():
        return None
    test = labelled & (table["split"].astype(str).to_numpy() == "test")
    return dataset, (("test",) if test.any() else None), int((test if test.any() else
                                                              labelled).sum())


def scene_cache_key(dataset: Any, splits: tuple[str, ...] | None, model_sha: str) -> str:
    stamp = str(dataset.manifest.get("created", ""))
    return (f"scene-evaluation:{CACHE_VERSION}:{dataset.path}:{stamp}:"
            f"{','.join(splits or ('all',))}:{model_sha[:20]}")


def run_scene_evaluation(
    run: EmbeddingsRun, service: ModelService,
    progress: Callable[[int, int], object] | None = None,
) -> DatasetScore | None:
    """The run's scenes scored whole by :func:`app.ml.evaluate.evaluate_dataset` (the CLI's
    function), or None without the dataset on disk or with more than :data:`MAX_SCENE_TILES`
    tiles to score."""
    source = scene_source(run)
    if source is None or source[2] > MAX_SCENE_TILES:
        return None
    dataset, splits, _ = source
    return evaluate_dataset(service, dataset.path, splits=splits, progress=progress)


def scene_group_rows(score: DatasetScore, threshold: float,
                     column: str = "disaster") -> list[dict[str, Any]]:
    """:func:`group_rows`' rows from whole scenes (``tiles`` holds the number of scenes)."""
    if column not in (*BREAKDOWNS, "split"):
        return []
    rows = []
    for value, s in score.breakdown(column, threshold).items():
        b = s["building"]
        rows.append({column: value, "tiles": s["scenes"],
                     **{f"px_{k}": s[k] for k in ("precision", "recall", "f1", "iou")},
                     **{f"b_{k}": b[k] for k in ("precision", "recall", "f1")},
                     "b_true": b["tp"] + b["fn"]})
    return rows



# --------------------------------------------------------------------------- the tile set


def evaluation_tiles(run: EmbeddingsRun, max_tiles: int | None = None
                     ) -> tuple[list[str], str, int]:
    """``(tile ids, description, n candidates)``: test tiles with truth (else all with truth)."""
    tiles = run.tiles
    max_tiles = MAX_TILES if max_tiles is None else int(max_tiles)
    ids = tiles["tile_id"].astype(str).to_numpy()
    has_truth = np.array([run.file_for("true", t) is not None for t in ids], dtype=bool)
    if "true_fraction" in tiles:
        has_truth |= tiles["true_fraction"].notna().to_numpy() & (runs.tile_dataset(run)
                                                                  is not None)
    test = (tiles["split"].astype(str).to_numpy() == "test") if "split" in tiles else np.zeros(
        len(ids), bool)
    if (test & has_truth).any():
        chosen, what = ids[test & has_truth], "test split"
    else:
        chosen, what = ids[has_truth], "all tiles with ground truth (the run has no test tiles)"
    n = len(chosen)
    if n > max_tiles:
        rows = np.sort(np.random.default_rng(0).choice(n, max_tiles, replace=False))
        chosen = chosen[rows]
        what += f", a seeded sample of {max_tiles:,} of {n:,}"
    return [str(t) for t in chosen], what, n



def run_evaluation(
    run: EmbeddingsRun,
    service: ModelService,
    *,
    version: str = "",
    model_run: str = "",
    progress: Callable[[int, int], object] | None = None,
    max_tiles: int | None = None,
) -> Evaluation:
    """Score ``service`` once on the run's evaluation tiles (see the module docstring)."""
    ids, source, n_candidates = evaluation_tiles(run, max_tiles)
    return evaluate_tiles(
        service, ids, lambda tid: (runs.tile_image(run, tid), runs.tile_truth(run, tid)),
        run_id=run.run_id, version=version, model_run=model_run, source=source,
        n_candidates=n_candidates, progress=progress,
    )


TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (id, header, type: text | pct | score | int)
    ("tile_id", "Tile", "text"),
    ("disaster", "Disaster", "text"),
    ("true_pct", "True %", "pct"),
    ("pred_pct", "Pred %", "pct"),
    ("precision", "Precision", "score"),
    ("recall", "Recall", "score"),
    ("f1", "F1", "score"),
    ("iou", "IoU", "score"),
    ("b_tp", "Bldg TP", "int"),
    ("b_fp", "Bldg FP", "int"),
    ("b_fn", "Bldg FN", "int"),
)


def tile_rows(ev: Evaluation, run: EmbeddingsRun, threshold: float) -> list[dict[str, Any]]:
    """One row per evaluated tile (``id`` = tile id, for ``active_cell["row_id"]``)."""
    conf = tile_confusion(ev, threshold)
    s = ratios(conf["tp"], conf["fp"], conf["fn"])
    j = building_index(threshold)
    total = (conf["tp"] + conf["fp"] + conf["fn"] + conf["tn"]).astype(float)
    total[total == 0] = 1.0
    tiles, index = run.tiles, run.index
    rows = []
    for i, tid in enumerate(ev.tile_ids):
        r = index.get(tid)
        meta = {c: (str(tiles[c].iat[r]) if r is not None and c in tiles and
                    tiles[c].iat[r] is not None else "") for c in ("disaster",)}
        rows.append({
            "id": tid, "tile_id": tid, **meta,
            "true_pct": round(float(conf["tp"][i] + conf["fn"][i]) / total[i] * 100, 2),
            "pred_pct": round(float(conf["tp"][i] + conf["fp"][i]) / total[i] * 100, 2),
            **{k: round(float(s[k][i]), 4) for k in ("precision", "recall", "f1", "iou")},
            "b_tp": int(ev.buildings[i, j, 0]), "b_fp": int(ev.buildings[i, j, 1]),
            "b_fn": int(ev.buildings[i, j, 2]),
        })
    return rows


def group_rows(ev: Evaluation, run: EmbeddingsRun, threshold: float,
               column: str = "disaster") -> list[dict[str, Any]]:
    """Pixel and building scores per value of ``column`` (e.g. per disaster)."""
    tiles, index = run.tiles, run.index
    if column not in tiles or not ev.tile_ids:
        return []
    values = np.array([str(tiles[column].iat[index[t]]) if t in index else "unknown"
                       for t in ev.tile_ids], dtype=object)
    conf = tile_confusion(ev, threshold)
    j = building_index(threshold)
    rows = []
    for value in sorted(set(values.tolist())):
        sel = values == value
        tp, fp, fn = (int(conf[k][sel].sum()) for k in ("tp", "fp", "fn"))
        px = ratios(np.array([tp]), np.array([fp]), np.array([fn]))
        btp, bfp, bfn = (int(v) for v in ev.buildings[sel, j, :].sum(axis=0))
        b = ratios(np.array([btp]), np.array([bfp]), np.array([bfn]))
        rows.append({
            column: value, "tiles": int(sel.sum()),
            **{f"px_{k}": float(px[k][0]) for k in ("precision", "recall", "f1", "iou")},
            **{f"b_{k}": float(b[k][0]) for k in ("precision", "recall", "f1")},
            "b_true": btp + bfn,
        })
    return rows


def damage_rows(ev: Evaluation, run: EmbeddingsRun, threshold: float) -> list[dict[str, Any]]:
    """Approximate building recall per damage class (see the module docstring)."""
    tiles, index = run.tiles, run.index
    cols = [c for c in tiles.columns if c.startswith("dmg_")]
    if not cols or not ev.tile_ids:
        return []
    rows_idx = [index[t] for t in ev.tile_ids]
    counts = tiles[cols].iloc[rows_idx].fillna(0).to_numpy(dtype=float)
    j = building_index(threshold)
    tp = ev.buildings[:, j, 0].astype(float)
    fn = ev.buildings[:, j, 2].astype(float)
    has = (tp + fn) > 0
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=has)
    out = []
    for c, col in enumerate(cols):
        w = counts[:, c] * has
        total = float(counts[:, c].sum())
        if total <= 0:
            continue
        out.append({
            "damage": col[4:].replace("_", "-"), "buildings": int(total),
            "tiles": int((counts[:, c] > 0).sum()),
            "recall": float((w * recall).sum() / w.sum()) if w.sum() > 0 else None,
        })
    return out



__all__ = [
    "MAX_SCENE_TILES", "MAX_TILES", "TABLE_COLUMNS", "cache_key", "damage_rows", "evaluation_tiles", "group_rows",
    "run_evaluation", "run_scene_evaluation", "scene_cache_key", "scene_group_rows",
    "scene_source", "tile_rows",
]
