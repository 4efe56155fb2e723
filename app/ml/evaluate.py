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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


@dataclass
class Evaluation:
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

    @property
    def histogram(self) -> PixelHistogram:
        hist = PixelHistogram(GLOBAL_BINS)
        hist.positive = self.positive.astype(np.int64)
        hist.negative = self.negative.astype(np.int64)
        return hist



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
    pos = np.zeros(GLOBAL_BINS + 1, np.int64)
    neg = np.zeros(GLOBAL_BINS + 1, np.int64)
    tpos: list[np.ndarray] = []
    tneg: list[np.ndarray] = []
    blds: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[str] = []
    resolutions: set[str] = set()
    total = len(ids)

    def finish(tid: str, prob: np.ndarray, truth: np.ndarray) -> None:
        nonlocal pos, neg
        if prob.shape != truth.shape:
            resolutions.add(f"stored masks ({truth.shape[1]}×{truth.shape[0]}; predictions "
                            "area-averaged down to them)")
            scale = truth.shape[0] / prob.shape[0]
            prob = resize_prob(prob, truth.shape)
        else:
            resolutions.add("full resolution")
            scale = 1.0
        g = np.clip(np.floor(prob.astype(np.float64) * GLOBAL_BINS), 0, GLOBAL_BINS).astype(np.intp)
        pos += np.bincount(g[truth], minlength=GLOBAL_BINS + 1)
        neg += np.bincount(g[~truth], minlength=GLOBAL_BINS + 1)
        t = np.clip(np.floor(prob.astype(np.float64) * TILE_BINS), 0, TILE_BINS).astype(np.intp)
        tpos.append(np.bincount(t[truth], minlength=TILE_BINS + 1).astype(np.int32))
        tneg.append(np.bincount(t[~truth], minlength=TILE_BINS + 1).astype(np.int32))
        min_area = max(1, round(BUILDING_MIN_AREA * scale * scale))
        row = []
        for thr in BUILDING_THRESHOLDS:
            s = building_scores(truth, prob >= thr, iou_threshold=BUILDING_IOU, min_area=min_area)
            row.append((s["tp"], s["fp"], s["fn"]))
        blds.append(np.asarray(row, np.int32))
        kept.append(tid)

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
    n = len(kept)
    return Evaluation(
        run_id=run_id, version=version, model_run=model_run, model_sha=service.sha256,
        tile_ids=kept, source=source,
        resolution="; ".join(sorted(resolutions)) or "–",
        positive=pos, negative=neg,
        tile_positive=np.stack(tpos) if n else np.zeros((0, TILE_BINS + 1), np.int32),
        tile_negative=np.stack(tneg) if n else np.zeros((0, TILE_BINS + 1), np.int32),
        buildings=np.stack(blds) if n else np.zeros((0, len(BUILDING_THRESHOLDS), 3), np.int32),
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


def pixel_summary(ev: Evaluation, threshold: float) -> dict[str, Any]:
    """Pixel confusion counts and scores over the whole set at ``threshold``."""
    conf = ev.histogram.confusion(float(threshold))
    return {**conf, **pixel_scores(**conf)}


def curves(ev: Evaluation) -> dict[str, np.ndarray]:
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


def building_summary(ev: Evaluation, threshold: float) -> dict[str, Any]:
    """Building-level TP/FP/FN (IoU ≥ 0.5) summed over tiles, at the nearest stored threshold."""
    j = building_index(threshold)
    tp, fp, fn = (int(v) for v in ev.buildings[:, j, :].sum(axis=0)) if len(ev.tile_ids) else (
        0, 0, 0)
    s = ratios(np.array([tp]), np.array([fp]), np.array([fn]))
    return {"threshold": BUILDING_THRESHOLDS[j], "tp": tp, "fp": fp, "fn": fn,
            **{k: float(s[k][0]) for k in ("precision", "recall", "f1")}}



__all__ = [
    "BATCH", "BUILDING_IOU", "BUILDING_MIN_AREA", "BUILDING_THRESHOLDS", "Evaluation",
    "GLOBAL_BINS", "TILE_BINS", "TileLoader", "building_index", "ratios", "building_summary", "curves",
    "evaluate_tiles", "pixel_summary", "resize_prob", "tile_confusion", "tile_scores",
]
