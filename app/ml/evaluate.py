"""Scoring a segmentation model on tiles: one model pass, then any threshold.

:func:`evaluate_tiles` runs the model once over (image, truth) pairs and keeps only counts: a
global :class:`~app.ml.metrics.PixelHistogram` of :data:`GLOBAL_BINS` bins (PR and IoU curves),
per-tile histograms of :data:`TILE_BINS` bins (each tile's confusion at any threshold on the 0.01
grid) and building-level TP/FP/FN per tile at :data:`BUILDING_THRESHOLDS`
(``metrics.building_scores``, IoU ≥ :data:`BUILDING_IOU`). The summaries below turn those counts
into scores at a threshold. Plain numpy (no Dash, no Flask): the Evaluate page and the CLI
share it; where the tiles come from is the caller's business.

When a truth mask is smaller than the prediction (stored thumbnail-size masks), the probability
map is area-averaged down to the mask's size, and the building minimum area scales with it.

:func:`evaluate_dataset` scores whole scenes of a tile dataset (``python -m app evaluate`` and
the Evaluate page's headline, one function). Summing per-tile counts counts the pixels of
overlapping edge tiles and of reflect padding again (2-3x the scene pixels on small scenes, up
to ±0.03 F1), and cuts buildings at tile borders in two. So every tile is predicted once, as
stored (the model's training inputs: its size, its padding), each scene's map and truth are
stitched back from them, every pixel from one tile (overlaps cut at their middle, padding
cropped), and the scene is scored whole. Running ``segment_large`` on a re-assembled scene
instead would cost extra passes where tiles overlap, differ from the per-tile table and from the
stored per-tile metrics, and need a model that takes its tile size (fixed-input imported models
do not); on real and synthetic scenes the two agree within 0.01 F1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from app.ml.metrics import PixelHistogram, building_scores, pixel_confusion, pixel_scores

if TYPE_CHECKING:  # pragma: no cover
    from app.ml.inference import ModelService

GLOBAL_BINS = 1000
TILE_BINS = 100
BUILDING_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
BUILDING_IOU = 0.5
BUILDING_MIN_AREA = 10  # pixels at full resolution (scaled down with the mask)
BATCH = 8


class _Histogram:
    """The :attr:`histogram` of a result holding ``positive`` / ``negative`` bin counts."""

    positive: np.ndarray
    negative: np.ndarray

    @property
    def histogram(self) -> PixelHistogram:
        hist = PixelHistogram(GLOBAL_BINS)
        hist.positive = self.positive.astype(np.int64)
        hist.negative = self.negative.astype(np.int64)
        return hist


@dataclass
class Evaluation(_Histogram):
    """Counts from one model pass over the evaluation tiles (small: safe to cache)."""

    run_id: str
    version: str
    model_run: str
    model_sha: str
    tile_ids: list[str]
    source: str  # which tiles, in words
    resolution: str  # at which resolution, in words
    positive: np.ndarray  # (GLOBAL_BINS + 1,) int64
    negative: np.ndarray  # (GLOBAL_BINS + 1,) int64
    tile_positive: np.ndarray  # (n, TILE_BINS + 1) int32
    tile_negative: np.ndarray  # (n, TILE_BINS + 1) int32
    buildings: np.ndarray  # (n, len(BUILDING_THRESHOLDS), 3) int32: tp, fp, fn
    seconds: float
    device: str
    skipped: list[str] = field(default_factory=list)
    n_candidates: int = 0



#: ``load(tile_id) -> (image, truth)``; either is None when the tile has none.
TileLoader = Callable[[str], tuple["np.ndarray | None", "np.ndarray | None"]]


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average (shrink) or bilinear (grow) resize of a probability map to (h, w)."""
    if prob.shape == tuple(shape):
        return prob.astype(np.float32)
    im = Image.fromarray(prob.astype(np.float32), mode="F")
    shrink = shape[0] < prob.shape[0]
    out = im.resize((shape[1], shape[0]),
                    Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


class _Counts:
    """What both passes keep per scored mask (tile or scene): the :data:`GLOBAL_BINS`
    histograms of all masks, and per mask its :data:`TILE_BINS` histograms and building
    TP/FP/FN at :data:`BUILDING_THRESHOLDS`."""

    def __init__(self, dtype: type) -> None:
        self.dtype = dtype
        self.positive = np.zeros(GLOBAL_BINS + 1, np.int64)
        self.negative = np.zeros(GLOBAL_BINS + 1, np.int64)
        self.each: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        self.ids: list[str] = []

    def add(self, mask_id: str, prob: np.ndarray, truth: np.ndarray,
            min_area: int = BUILDING_MIN_AREA) -> None:
        for bins, overall in ((GLOBAL_BINS, True), (TILE_BINS, False)):
            idx = np.clip(np.floor(prob.astype(np.float64) * bins), 0, bins).astype(np.intp)
            pos = np.bincount(idx[truth], minlength=bins + 1)
            neg = np.bincount(idx[~truth], minlength=bins + 1)
            if overall:
                self.positive += pos
                self.negative += neg
            else:
                self.each[0].append(pos.astype(self.dtype))
                self.each[1].append(neg.astype(self.dtype))
        self.each[2].append(_building_counts(truth, prob, min_area).astype(self.dtype))
        self.ids.append(mask_id)

    def stacked(self) -> list[np.ndarray]:
        """Per-mask positive, negative and building arrays (empty ones of the right shape)."""
        shapes = ((TILE_BINS + 1,), (TILE_BINS + 1,), (len(BUILDING_THRESHOLDS), 3))
        return [np.stack(rows) if rows else np.zeros((0, *shape), self.dtype)
                for rows, shape in zip(self.each, shapes, strict=True)]


def _edge(threshold: float, bins: int) -> int:
    return int(np.clip(np.ceil(np.round(threshold * bins, 6)), 0, bins))



def evaluate_tiles(
    service: ModelService,
    ids: Sequence[str],
    load: TileLoader,
    *,
    run_id: str = "",
    version: str = "",
    model_run: str = "",
    source: str = "",
    n_candidates: int = 0,
    progress: Callable[[int, int], object] | None = None,
) -> Evaluation:
    """Run the model once over the tiles ``ids`` (pixels from ``load``) and keep the counts.

    Tiles without an image or truth are listed in ``skipped``; tiles whose sides are not
    multiples of 16 get one padded pass each, the others go through in batches of
    :data:`BATCH` of the same size.
    """
    started = time.perf_counter()
    counts = _Counts(np.int32)
    skipped: list[str] = []
    resolutions: set[str] = set()
    total = len(ids)

    def finish(tid: str, prob: np.ndarray, truth: np.ndarray) -> None:
        if prob.shape != truth.shape:
            resolutions.add(f"stored masks ({truth.shape[1]}×{truth.shape[0]}; predictions "
                            "area-averaged down to them)")
            scale = truth.shape[0] / prob.shape[0]
            prob = resize_prob(prob, truth.shape)
        else:
            resolutions.add("full resolution")
            scale = 1.0
        min_area = max(1, round(BUILDING_MIN_AREA * scale * scale))
        counts.add(tid, prob, truth, min_area)

    batch: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        probs = service.predict_batch(np.stack([img for _, img, _ in batch]).astype(np.float32))
        for (tid, _, truth), prob in zip(batch, probs, strict=True):
            finish(tid, prob, truth)
        batch.clear()

    for i, tid in enumerate(ids):
        image, truth = load(tid)
        if image is None or truth is None or image.shape[0] % 16 or image.shape[1] % 16:
            if image is not None and truth is not None:  # odd size: one padded pass
                flush()
                finish(tid, service.predict_tile(image), truth)
            else:
                skipped.append(tid)
        else:
            if batch and (batch[0][1].shape != image.shape or len(batch) >= BATCH):
                flush()
            batch.append((tid, image, truth))
        if progress is not None and (i % 4 == 3 or i == total - 1):
            progress(i + 1, total)
    flush()
    tile_pos, tile_neg, buildings = counts.stacked()
    return Evaluation(
        run_id=run_id, version=version, model_run=model_run, model_sha=service.sha256,
        tile_ids=counts.ids, source=source,
        resolution="; ".join(sorted(resolutions)) or "–",
        positive=counts.positive, negative=counts.negative,
        tile_positive=tile_pos, tile_negative=tile_neg, buildings=buildings,
        seconds=time.perf_counter() - started, device=service.device, skipped=skipped,
        n_candidates=n_candidates,
    )


# --------------------------------------------------------------------------- summaries


def tile_scores(prob: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """One tile's pixel confusion and scores at ``threshold``, at the truth's resolution (as
    :func:`evaluate_tiles` scores it, so the numbers match the table)."""
    if prob.shape != truth.shape:
        prob = resize_prob(prob, truth.shape)
    conf = pixel_confusion(truth, prob, float(threshold))
    return {**conf, **pixel_scores(**conf)}


def pixel_summary(ev: Evaluation | DatasetScore, threshold: float) -> dict[str, Any]:
    """Pixel confusion counts and scores over the whole set at ``threshold``."""
    conf = ev.histogram.confusion(float(threshold))
    return {**conf, **pixel_scores(**conf)}


def curves(ev: Evaluation | DatasetScore) -> dict[str, np.ndarray]:
    """Scores at thresholds 0, 0.01, …, 1 (PR curve, IoU/F1 vs threshold)."""
    return ev.histogram.curve(np.linspace(0.0, 1.0, 101))


def tile_confusion(ev: Evaluation, threshold: float) -> dict[str, np.ndarray]:
    """Per-tile tp, fp, fn, tn arrays at ``threshold`` (exact on the 0.01 grid)."""
    k = _edge(float(threshold), TILE_BINS)
    tp = ev.tile_positive[:, k:].sum(axis=1).astype(np.int64)
    fp = ev.tile_negative[:, k:].sum(axis=1).astype(np.int64)
    fn = ev.tile_positive.sum(axis=1).astype(np.int64) - tp
    tn = ev.tile_negative.sum(axis=1).astype(np.int64) - fp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def ratios(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    tp, fp, fn = (np.asarray(v, float) for v in (tp, fp, fn))
    empty = (tp + fp + fn) == 0
    one = np.where(empty, 1.0, 0.0)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = one.copy()
        np.divide(num, den, out=out, where=den > 0)
        return out

    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "empty": empty}


def building_index(threshold: float) -> int:
    """Index of the building threshold nearest to ``threshold``."""
    return int(np.argmin([abs(t - float(threshold)) for t in BUILDING_THRESHOLDS]))


def building_summary(ev: Evaluation | DatasetScore, threshold: float) -> dict[str, Any]:
    """Building-level TP/FP/FN (IoU ≥ 0.5) summed over tiles, at the nearest stored threshold."""
    j = building_index(threshold)
    tp, fp, fn = (int(v) for v in ev.buildings[:, j, :].sum(axis=0)) if len(ev.buildings) else (
        0, 0, 0)
    s = ratios(np.array([tp]), np.array([fp]), np.array([fn]))
    return {"threshold": BUILDING_THRESHOLDS[j], "tp": tp, "fp": fp, "fn": fn,
            **{k: float(s[k][0]) for k in ("precision", "recall", "f1")}}




# --------------------------------------------------------------------------- whole scenes

#: Scene columns the scores are broken down by (``"unknown"`` where a dataset has no such
#: column or value): the dataset's source, the xBD / synthetic disaster, and pre/post.
BREAKDOWNS: tuple[str, ...] = ("source", "disaster", "phase")
SCORE_FORMAT = "unet-lens-evaluation/1"
_PADDED = re.compile(r"from (\d+)x(\d+)")


@dataclass
class DatasetScore(_Histogram):
    """Counts from scoring a model on the stitched scenes of a tile dataset (every scene pixel
    counted once); :meth:`scores` turns them into numbers at any threshold.

    Per scene: :data:`TILE_BINS` probability histograms of building and background pixels and
    building-level TP/FP/FN at :data:`BUILDING_THRESHOLDS`; overall: a :data:`GLOBAL_BINS`
    histogram (curves). ``tile_sum`` keeps what summing per-tile counts at 0.5 gives (overlaps
    and padding counted again), only to show the difference.
    """

    model_run: str
    model_sha: str
    dataset: str
    dataset_name: str
    splits: tuple[str, ...]
    scene_ids: list[str]
    meta: dict[str, list[str]]  # BREAKDOWNS key (and "split") -> one value per scene
    shapes: list[tuple[int, int]]  # (height, width) per scene
    n_tiles: int
    positive: np.ndarray  # (GLOBAL_BINS + 1,) int64
    negative: np.ndarray
    scene_positive: np.ndarray  # (n, TILE_BINS + 1) int64
    scene_negative: np.ndarray
    buildings: np.ndarray  # (n, len(BUILDING_THRESHOLDS), 3) int64: tp, fp, fn
    tile_sum: dict[str, int]
    seconds: float
    device: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    created: str = ""

    @property
    def n_pixels(self) -> int:
        return int(sum(h * w for h, w in self.shapes))

    def scores(self, threshold: float = 0.5, select: np.ndarray | slice | None = None
               ) -> dict[str, Any]:
        """Pixel and building scores at ``threshold`` over all scenes or the ``select``ed ones
        (a boolean mask or a slice)."""
        sel = slice(None) if select is None else select
        k = _edge(float(threshold), TILE_BINS)
        pos, neg = self.scene_positive[sel], self.scene_negative[sel]
        tp, fp = int(pos[:, k:].sum()), int(neg[:, k:].sum())
        fn, tn = int(pos.sum()) - tp, int(neg.sum()) - fp
        px = pixel_scores(tp, fp, fn, tn)
        j = building_index(threshold)
        btp, bfp, bfn = (int(v) for v in self.buildings[sel, j, :].sum(axis=0))
        b = ratios(np.array([btp]), np.array([bfp]), np.array([bfn]))
        return {
            "scenes": len(pos), "pixels": tp + fp + fn + tn,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            **{m: float(px[m]) for m in ("precision", "recall", "f1", "iou")},
            "building": {"threshold": BUILDING_THRESHOLDS[j], "iou": BUILDING_IOU,
                         "tp": btp, "fp": bfp, "fn": bfn,
                         **{m: float(b[m][0]) for m in ("precision", "recall", "f1")}},
        }

    def breakdown(self, key: str, threshold: float = 0.5) -> dict[str, dict[str, Any]]:
        """:meth:`scores` per value of ``key`` (one of :data:`BREAKDOWNS` or ``"split"``)."""
        values = np.asarray(self.meta.get(key, ["unknown"] * len(self.scene_ids)), dtype=object)
        return {str(v): self.scores(threshold, values == v) for v in sorted(set(values.tolist()))}

    def to_dict(self, threshold: float = 0.5) -> dict[str, Any]:
        """Everything as plain JSON types (the CLI's ``--json``)."""
        from app import artifacts
        tile = self.tile_sum
        tile_scores_ = pixel_scores(tile["tp"], tile["fp"], tile["fn"], tile["tn"])
        return {
            "format": SCORE_FORMAT,
            "model_run": self.model_run, "model_sha256": self.model_sha,
            "dataset": {"path": self.dataset, "name": self.dataset_name},
            "splits": list(self.splits), "threshold": float(threshold),
            "counted": "every scene pixel once, on the stitched scene (no overlap, no padding)",
            "counts": {"scenes": len(self.scene_ids), "tiles": self.n_tiles,
                       "pixels": self.n_pixels, "skipped": len(self.skipped)},
            "overall": self.scores(threshold),
            **{f"by_{key}": self.breakdown(key, threshold) for key in BREAKDOWNS},
            "scenes": [
                {"scene_id": sid, "height": h, "width": w,
                 **{key: self.meta[key][i] for key in ("split", *BREAKDOWNS)},
                 **{m: v for m, v in self.scores(threshold, slice(i, i + 1)).items()
                    if m != "scenes"}}
                for i, (sid, (h, w)) in enumerate(zip(self.scene_ids, self.shapes, strict=True))
            ],
            "tile_sum": {**tile, **{m: float(tile_scores_[m]) for m in
                                    ("precision", "recall", "f1", "iou")},
                         "note": "per-tile counts summed at 0.5: overlapping tiles and padding "
                                 "counted again (for comparison only)"},
            "skipped": [[sid, why] for sid, why in self.skipped],
            "seconds": round(self.seconds, 3), "device": self.device,
            "created": self.created, "versions": artifacts.versions(),
        }

    def summary_lines(self, threshold: float = 0.5) -> list[str]:
        """A readable table: overall, then per source, disaster and pre/post."""
        head = (f"{'':<24} {'scenes':>6} {'Px P':>6} {'Px R':>6} {'Px F1':>6} {'Px IoU':>6}"
                f" {'Bldg P':>6} {'Bldg R':>6} {'Bldg F1':>7} {'Bldg':>6}")

        def line(name: str, s: dict[str, Any]) -> str:
            b = s["building"]
            return (f"{name[:24]:<24} {s['scenes']:>6} {s['precision']:>6.3f} {s['recall']:>6.3f}"
                    f" {s['f1']:>6.3f} {s['iou']:>6.3f} {b['precision']:>6.3f} {b['recall']:>6.3f}"
                    f" {b['f1']:>7.3f} {b['tp'] + b['fn']:>6}")

        overall = self.scores(threshold)
        lines = [
            f"model {self.model_run} on {self.dataset_name} ({', '.join(self.splits)}): "
            f"{len(self.scene_ids)} scenes, {self.n_tiles} tiles, {self.n_pixels:,} pixels, "
            f"each counted once",
            f"pixel threshold {threshold:g}; buildings matched at IoU ≥ {BUILDING_IOU} "
            f"(threshold {overall['building']['threshold']:g}); Bldg = true buildings",
            "", head, line("overall", overall),
        ]
        for key in BREAKDOWNS:
            lines += ["", f"by {key}"]
            lines += [line(f"  {v}", s) for v, s in self.breakdown(key, threshold).items()]
        if self.skipped:
            lines += ["", f"skipped {len(self.skipped)} scenes:"]
            lines += [f"  {sid}: {why}" for sid, why in self.skipped[:20]]
        return lines


def _owned(starts: Sequence[int], size: int, length: int, scene: str) -> dict[int, tuple[int, int]]:
    """Along one axis, the ``[lo, hi)`` scene pixels each tile start owns: overlaps are cut at
    their middle, so every pixel comes from the tile where it has the most context."""
    starts = sorted(set(int(s) for s in starts))
    if starts[0] != 0 or starts[-1] + size < length or any(
            b > a + size for a, b in zip(starts, starts[1:], strict=False)):
        raise ValueError(f"scene {scene}: its tiles (at {starts}, {size} px) do not cover "
                         f"0..{length}")
    cuts = [0, *((b + min(a + size, length)) // 2 for a, b in zip(starts, starts[1:],
                                                                  strict=False)), length]
    return {s: (cuts[i], cuts[i + 1]) for i, s in enumerate(starts)}


def _scene_extent(rows: Any) -> tuple[int, int]:
    """(height, width) of a scene from its tiles; a reflect-padded scene's real extent comes
    from the tile's ``padded`` note (``reflect from WxH to ...``)."""
    size = int(rows["size"].iloc[0])
    height, width = int(rows["y"].max()) + size, int(rows["x"].max()) + size
    note = rows["padded"].iloc[0] if "padded" in rows else None
    match = _PADDED.search(note) if isinstance(note, str) else None
    if match:
        width, height = min(width, int(match.group(1))), min(height, int(match.group(2)))
    return height, width


def _building_counts(truth: np.ndarray, prob: np.ndarray,
                     min_area: int = BUILDING_MIN_AREA) -> np.ndarray:
    """(len(BUILDING_THRESHOLDS), 3) building TP, FP, FN of one mask at each threshold."""
    out = []
    for thr in BUILDING_THRESHOLDS:
        s = building_scores(truth, prob >= thr, iou_threshold=BUILDING_IOU, min_area=min_area)
        out.append((s["tp"], s["fp"], s["fn"]))
    return np.asarray(out, np.int64)


def _check_splits(splits: Sequence[str] | None) -> tuple[str, ...]:
    from app.data.tiling import SPLITS

    if splits is None:
        return SPLITS
    if isinstance(splits, str):
        splits = (splits,)
    chosen = tuple(splits)
    bad = [s for s in chosen if s not in SPLITS]
    if not chosen or bad:
        raise ValueError(f"The 'splits' parameter must name some of {list(SPLITS)}. "
                         f"Got {list(chosen)!r} instead.")
    return tuple(dict.fromkeys(chosen))


def _service_for(model_run: str | ModelService, store: Path | None) -> ModelService:
    from app import artifacts, config
    from app.ml.inference import ModelService, get_service

    if isinstance(model_run, ModelService):
        return model_run
    root = Path(store or config.MODEL_STORE)
    artifacts.validate_run_id(model_run)
    if not (artifacts.model_dir(model_run, root) / artifacts.MANIFEST).is_file():
        known = ", ".join(artifacts.list_runs(root)) or "none"
        raise artifacts.ArtifactError(
            f"Unknown model run {model_run!r} in {root}; expected one of: {known} "
            "(import one with `python -m app import-model` or train one).")
    return get_service(model_run, root)


def evaluate_dataset(
    model_run: str | ModelService,
    dataset_dir: Path | str,
    *,
    splits: Sequence[str] | None = ("test",),
    store: Path | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> DatasetScore:
    """Score a model on the scenes of a tile dataset, each scene pixel counted exactly once.

    Every tile of the chosen ``splits`` (None: all) is predicted once, as the model saw tiles in
    training; each scene's probability map and truth are then stitched from its tiles, each
    pixel taken from one tile (overlaps cut at their middle) and reflect padding cropped off,
    and the scene is scored whole: pixel counts, and building-level matching on the scene's
    connected components (a building cut by a tile border is one building). ``model_run`` is a
    model-store run id (in ``store``) or a loaded :class:`~app.ml.inference.ModelService`.
    ``progress(done_tiles, total_tiles)`` is called as tiles are predicted. Scenes without
    ground truth are listed in ``skipped``.
    """
    from app import artifacts
    from app.data.base import DatasetError
    from app.data.dataset import TileDataset

    started = time.perf_counter()
    chosen = _check_splits(splits)
    path = Path(dataset_dir)
    if not path.exists():
        raise DatasetError(f"Dataset folder {path} does not exist; expected a make-dataset "
                           "output folder (`python -m app make-dataset` or `build`).")
    dataset = TileDataset.open(path)
    service = _service_for(model_run, store)
    table = dataset.table
    present = sorted(set(table["split"].astype(str)))
    rows_all = table[table["split"].astype(str).isin(chosen)]
    if rows_all.empty:
        counts = table["split"].astype(str).value_counts()
        has = ", ".join(f"{s} ({int(counts[s])} tiles)" for s in present)
        raise ValueError(f"{path}: no tiles in splits {list(chosen)}; the dataset has {has}.")
    labelled = rows_all[rows_all["has_mask"].astype(bool)]
    skipped = [(str(s), "no ground truth") for s in
               sorted(set(rows_all["scene_id"].astype(str)) - set(labelled["scene_id"].astype(str)))]
    scenes = list(labelled.groupby("scene_id", sort=True))
    total = len(labelled)
    counts = _Counts(np.int64)
    shapes: list[tuple[int, int]] = []
    meta: dict[str, list[str]] = {k: [] for k in ("split", *BREAKDOWNS)}
    tile_sum = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    done = 0
    for scene_id, rows in scenes:
        sid = str(scene_id)
        height, width = _scene_extent(rows)
        size = int(rows["size"].iloc[0])
        xs = _owned(rows["x"].tolist(), size, width, sid)
        ys = _owned(rows["y"].tolist(), size, height, sid)
        prob = np.zeros((height, width), np.float32)
        truth = np.zeros((height, width), bool)
        covered = 0
        tiles = list(zip(rows["tile_id"].astype(str), rows["x"].astype(int),
                         rows["y"].astype(int), strict=True))
        for start in range(0, len(tiles), BATCH):
            chunk = tiles[start:start + BATCH]
            images = [dataset.image(t) for t, _, _ in chunk]
            try:
                if size % 16:
                    probs = [service.predict_tile(im, use_cache=False) for im in images]
                else:
                    probs = list(service.predict_batch(np.stack(images).astype(np.float32)))
            except Exception as exc:  # noqa: BLE001 - Keras and TF raise many types on bad shapes
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ValueError(f"Model {service.run_id or 'in memory'} cannot segment the "
                                 f"{size}x{size} tiles of {path}: {first}") from exc
            for (tid, x, y), p in zip(chunk, probs, strict=True):
                mask = dataset.mask(tid).astype(bool)
                hit = p >= 0.5
                both = int(np.count_nonzero(mask & hit))
                tile_sum["tp"] += both
                tile_sum["fp"] += int(np.count_nonzero(hit)) - both
                tile_sum["fn"] += int(np.count_nonzero(mask)) - both
                tile_sum["tn"] += int(mask.size - np.count_nonzero(mask | hit))
                (x0, x1), (y0, y1) = xs[x], ys[y]
                prob[y0:y1, x0:x1] = p[y0 - y:y1 - y, x0 - x:x1 - x]
                truth[y0:y1, x0:x1] = mask[y0 - y:y1 - y, x0 - x:x1 - x]
                covered += (x1 - x0) * (y1 - y0)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if covered != height * width:
            raise DatasetError(f"{path}: scene {sid} has {covered} of {height * width} pixels "
                               "covered by its tiles (a tile is missing or doubled).")
        counts.add(sid, prob, truth)
        shapes.append((height, width))
        first = rows.iloc[0]
        for key in meta:
            value = first[key] if key in rows else None
            meta[key].append("unknown" if value is None or value != value or value == ""
                             else str(value))
    scene_pos, scene_neg, buildings = counts.stacked()
    return DatasetScore(
        model_run=model_run if isinstance(model_run, str) else str(service.run_id or ""),
        model_sha=service.sha256, dataset=str(path),
        dataset_name=str(dataset.manifest.get("name") or path.name), splits=chosen,
        scene_ids=counts.ids, meta=meta, shapes=shapes, n_tiles=total,
        positive=counts.positive, negative=counts.negative, scene_positive=scene_pos,
        scene_negative=scene_neg, buildings=buildings,
        tile_sum=tile_sum, seconds=time.perf_counter() - started, device=service.device,
        skipped=skipped, created=artifacts.now_iso(),
    )


__all__ = [
    "BATCH", "BREAKDOWNS", "BUILDING_IOU", "BUILDING_MIN_AREA", "BUILDING_THRESHOLDS",
    "DatasetScore", "Evaluation", "GLOBAL_BINS", "TILE_BINS", "TileLoader", "building_index",
    "building_summary", "curves", "evaluate_dataset", "evaluate_tiles", "pixel_summary", "ratios",
    "resize_prob", "tile_confusion", "tile_scores",
]
