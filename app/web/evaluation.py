"""The Evaluate page's numbers: one model pass over the evaluation tiles, then any threshold.

**Evaluation set**: the embeddings run's tiles of split ``test`` that have ground truth (all
tiles with truth when the run has no test split), at most :data:`MAX_TILES` of them (a seeded
sample beyond that, said on the page).

**One pass** (:func:`run_evaluation`) runs the model once over those tiles and keeps only
counts: a global :class:`~app.ml.metrics.PixelHistogram` of 1000 bins (PR and IoU curves),
per-tile histograms of 100 bins (each tile's confusion at any threshold on the 0.01 grid, which
is the slider's step) and building-level TP/FP/FN per tile at :data:`BUILDING_THRESHOLDS`
(``metrics.building_scores``, IoU ≥ 0.5). The result is stored in the shared flask-caching
cache under (run, run version, model SHA-256), so the pass runs once per model and run.

**Resolution**: with the run's dataset on disk, the lossless tile and its full-resolution mask
are used; otherwise the run's stored JPEG tile and stored (thumbnail-size) truth mask, the
probability map being area-averaged down to the mask's size (said on the page).

**Damage classes**: tiles store per-class building counts (``dmg_*``) but not which ground-truth
instance has which class, so recall per damage class is approximated as the count-weighted mean
of the tiles' building recall: ``sum_t dmg_c(t) · recall(t) / sum_t dmg_c(t)``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ml.metrics import PixelHistogram, pixel_scores
from app.web import services

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from app.artifacts import EmbeddingsRun
    from app.ml.inference import ModelService

log = logging.getLogger(__name__)

#: At most this many tiles are evaluated (a seeded sample beyond); ``$UNET_LENS_EVAL_MAX_TILES``.
MAX_TILES = int(os.environ.get("UNET_LENS_EVAL_MAX_TILES", "1000"))
GLOBAL_BINS = 1000
TILE_BINS = 100
BUILDING_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
BUILDING_IOU = 0.5
BUILDING_MIN_AREA = 10  # pixels at full resolution (scaled down with the mask)
BATCH = 8
CACHE_VERSION = 1


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


def cache_key(run_id: str, version: str, model_sha: str) -> str:
    return f"evaluation:{CACHE_VERSION}:{run_id}:{version}:{model_sha[:20]}"


# --------------------------------------------------------------------------- the tile set


def evaluation_tiles(run: EmbeddingsRun, max_tiles: int | None = None
                     ) -> tuple[list[str], str, int]:
    """``(tile ids, description, n candidates)``: test tiles with truth (else all with truth)."""
    tiles = run.tiles
    max_tiles = MAX_TILES if max_tiles is None else int(max_tiles)
    ids = tiles["tile_id"].astype(str).to_numpy()
    has_truth = np.array([run.file_for("true", t) is not None for t in ids], dtype=bool)
    if "true_fraction" in tiles:
        has_truth |= tiles["true_fraction"].notna().to_numpy() & (services.tile_dataset(run)
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


# --------------------------------------------------------------------------- the pass


def _edge(threshold: float, bins: int) -> int:
    return int(np.clip(np.ceil(np.round(threshold * bins, 6)), 0, bins))


def run_evaluation(
    run: EmbeddingsRun,
    service: ModelService,
    *,
    version: str = "",
    model_run: str = "",
    progress: Callable[[int, int], object] | None = None,
    max_tiles: int | None = None,
) -> Evaluation:
    """Run the model once over the evaluation tiles and keep the counts (see module doc)."""
    from app.ml.metrics import building_scores

    ids, source, n_candidates = evaluation_tiles(run, max_tiles)
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
            prob = services.resize_prob(prob, truth.shape)
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
        image = services.tile_image(run, tid)
        truth = services.tile_truth(run, tid)
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
        run_id=run.run_id, version=version, model_run=model_run, model_sha=service.sha256,
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
    :func:`run_evaluation` scores it, so the numbers match the table)."""
    from app.ml.metrics import pixel_confusion

    if prob.shape != truth.shape:
        prob = services.resize_prob(prob, truth.shape)
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


def _ratios(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
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
    s = _ratios(np.array([tp]), np.array([fp]), np.array([fn]))
    return {"threshold": BUILDING_THRESHOLDS[j], "tp": tp, "fp": fp, "fn": fn,
            **{k: float(s[k][0]) for k in ("precision", "recall", "f1")}}


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
    s = _ratios(conf["tp"], conf["fp"], conf["fn"])
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
        px = _ratios(np.array([tp]), np.array([fp]), np.array([fn]))
        btp, bfp, bfn = (int(v) for v in ev.buildings[sel, j, :].sum(axis=0))
        b = _ratios(np.array([btp]), np.array([bfp]), np.array([bfn]))
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


# --------------------------------------------------------------------------- figures


def pr_figure(ev: Evaluation, threshold: float, height: int = 300) -> go.Figure:
    """Pixel precision vs recall over thresholds, the current threshold marked."""
    import plotly.graph_objects as go

    from app.web.figures import TEMPLATE

    c = curves(ev)
    cur = pixel_summary(ev, threshold)
    fig = go.Figure(go.Scatter(
        x=c["recall"], y=c["precision"], mode="lines", line={"color": "#2f6fde", "width": 2.2},
        customdata=c["threshold"], name="PR",
        hovertemplate="threshold %{customdata:.2f}<br>recall %{x:.3f}<br>"
                      "precision %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[cur["recall"]], y=[cur["precision"]], mode="markers", name="current",
        marker={"size": 12, "color": "#e15759", "line": {"color": "#fff", "width": 2}},
        hovertemplate=f"threshold {threshold:.2f}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}"
                      "<extra></extra>"))
    fig.update_layout(
        template=TEMPLATE, height=height, showlegend=False,
        title={"text": "Precision–recall (pixels)"},
        margin={"l": 54, "r": 14, "t": 40, "b": 44},
        xaxis={"title": {"text": "Recall"}, "range": [0, 1.02]},
        yaxis={"title": {"text": "Precision"}, "range": [0, 1.02]})
    return fig


def threshold_figure(ev: Evaluation, threshold: float, height: int = 300) -> go.Figure:
    """IoU and F1 vs threshold, the current threshold and the best-IoU one marked."""
    import plotly.graph_objects as go

    from app.web.figures import TEMPLATE

    c = curves(ev)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=c["threshold"], y=c["iou"], mode="lines", name="IoU",
                             line={"color": "#59a14f", "width": 2.2},
                             hovertemplate="threshold %{x:.2f}<br>IoU %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=c["threshold"], y=c["f1"], mode="lines", name="F1",
                             line={"color": "#f28e2b", "width": 1.6, "dash": "dot"},
                             hovertemplate="threshold %{x:.2f}<br>F1 %{y:.3f}<extra></extra>"))
    best = float(c["threshold"][int(np.argmax(c["iou"]))])
    fig.add_vline(x=threshold, line={"color": "#e15759", "width": 1.5},
                  annotation={"text": f"t = {threshold:.2f}", "font": {"size": 11}},
                  annotation_position="top right")
    if abs(best - threshold) > 0.015:
        fig.add_vline(x=best, line={"color": "#8a96a3", "width": 1, "dash": "dash"},
                      annotation={"text": f"best IoU at {best:.2f}", "font": {"size": 10,
                                                                               "color": "#66727f"}},
                      annotation_position="bottom left")
    fig.update_layout(
        template=TEMPLATE, height=height, title={"text": "IoU and F1 vs threshold"},
        margin={"l": 54, "r": 14, "t": 40, "b": 44},
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.13},
        xaxis={"title": {"text": "Threshold"}, "range": [0, 1]},
        yaxis={"title": {"text": "Score"}, "range": [0, 1.02]})
    return fig


def confusion_figure(summary: dict[str, Any], height: int = 300) -> go.Figure:
    """2×2 pixel confusion matrix with counts and shares."""
    import plotly.graph_objects as go

    from app.web.figures import TEMPLATE

    tp, fp, fn, tn = (int(summary[k]) for k in ("tp", "fp", "fn", "tn"))
    total = max(1, tp + fp + fn + tn)
    z = [[tp, fn], [fp, tn]]
    names = [["TP", "FN"], ["FP", "TN"]]
    text = [[f"<b>{names[i][k]}</b><br>{z[i][k]:,}<br>{z[i][k] / total:.1%}" for k in range(2)]
            for i in range(2)]
    fig = go.Figure(go.Heatmap(
        z=np.log10(np.asarray(z, float) + 1), x=["building", "background"],
        y=["building", "background"], text=text, texttemplate="%{text}",
        textfont={"size": 13}, colorscale=[[0, "#f4f7fb"], [1, "#2f6fde"]], showscale=False,
        hovertemplate="truth %{y} · predicted %{x}<extra></extra>", xgap=3, ygap=3))
    fig.update_layout(
        template=TEMPLATE, height=height, title={"text": "Confusion matrix (pixels)"},
        margin={"l": 90, "r": 14, "t": 40, "b": 54},
        xaxis={"title": {"text": "Predicted"}, "side": "bottom", "showgrid": False},
        yaxis={"title": {"text": "Truth"}, "autorange": "reversed", "showgrid": False})
    return fig


def damage_figure(rows: list[dict[str, Any]], height: int = 260) -> go.Figure:
    """Approximate building recall per damage class (bars labelled with building counts)."""
    import plotly.graph_objects as go

    from app.web.analysis import DAMAGE_COLOURS
    from app.web.figures import TEMPLATE

    rows = [r for r in rows if r.get("recall") is not None]
    names = [r["damage"] for r in rows]
    fig = go.Figure(go.Bar(
        x=names, y=[r["recall"] for r in rows],
        marker={"color": [DAMAGE_COLOURS.get(n, "#9c755f") for n in names]},
        text=[f"{r['recall']:.2f}<br><span style='font-size:10px'>{r['buildings']:,} bldg</span>"
              for r in rows],
        textposition="outside", cliponaxis=False,
        hovertemplate="%{x}: recall ≈ %{y:.3f}<extra></extra>"))
    fig.update_layout(
        template=TEMPLATE, height=height, showlegend=False,
        title={"text": "Building recall by damage class (approx.)"},
        margin={"l": 54, "r": 14, "t": 40, "b": 44},
        yaxis={"title": {"text": "Recall"}, "range": [0, 1.18]})
    return fig


__all__ = [
    "BUILDING_THRESHOLDS", "Evaluation", "MAX_TILES", "TABLE_COLUMNS", "building_summary",
    "cache_key", "confusion_figure", "curves", "damage_figure", "damage_rows", "evaluation_tiles",
    "group_rows", "pixel_summary", "pr_figure", "run_evaluation", "threshold_figure",
    "tile_confusion", "tile_rows",
]
