"""Segmentation metrics for building masks: pixel-level, threshold sweeps and building-level.

Plain numpy/scipy/scikit-image so the Evaluate page can use it without importing TensorFlow.

Conventions (shared by every function here):

- **Truth masks**: bool, or numbers where ``> 0.5`` means building (so 0/1 and 0/255 both work).
- **Predictions**: bool or integer arrays are taken as masks (non-zero = building); float arrays
  are probabilities in [0, 1] and a pixel is a building when ``prob >= threshold``. ``>=`` (not
  ``>``) makes threshold 0 mean "everything" and matches the histogram bins of
  :class:`PixelHistogram`, whose edges are multiples of ``1 / n_bins``.
- **Empty tiles**: when there are no true and no predicted buildings, precision, recall, F1 and
  IoU are **1.0** (perfect agreement on an empty tile) and the result carries ``empty=True``, so
  per-tile tables stay finite and a UI can grey such rows out or drop them from averages. When
  only one side is empty the undefined ratio is **0.0** (e.g. no predictions but missed
  buildings: precision 0, recall 0). Nothing here returns NaN.
- **Connectivity**: building instances are 8-connected components by default (buildings that
  touch at a corner are one component, as with ``skimage.measure.label``); pass
  ``connectivity=4`` to split them. Touching buildings are separated by
  :func:`count_buildings`'s watershed, not by the connectivity.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ERROR_COLOURS",
    "BuildingCount",
    "PixelHistogram",
    "building_scores",
    "count_buildings",
    "error_overlay",
    "mask_edges",
    "pixel_confusion",
    "pixel_scores",
    "pr_curve",
]

#: Overlay colours (RGB). Okabe-Ito vermillion and blue plus near-white: the three stay at least
#: ~55 CIELAB ΔE apart under simulated protanopia, deuteranopia and tritanopia (Machado et al.
#: 2009), unlike red/green or magenta/cyan. Errors get the saturated colours so they stand out;
#: correct building pixels only lighten.
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "tp": (240, 240, 240),  # correct building: near-white
    "fp": (213, 94, 0),  # false alarm: vermillion (orange-red)
    "fn": (0, 114, 178),  # missed building: blue
}


# --------------------------------------------------------------------------- validation helpers


def _check_fraction(name: str, value: object) -> float:
    """A float in [0, 1] (bools rejected: ``True`` is almost always a mistake)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not np.isfinite(value)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ValueError(
            f"The '{name}' parameter must be a float in [0, 1]. Got {value!r} instead."
        )
    return float(value)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, Integral)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"The '{name}' parameter must be an int {bound}. Got {value!r} instead.")
    return int(value)


def _check_connectivity(connectivity: object) -> np.ndarray:
    """Structuring element for ``scipy.ndimage.label``: 4 -> cross, 8 -> full 3x3."""
    if isinstance(connectivity, bool) or connectivity not in (4, 8):
        raise ValueError(
            f"The 'connectivity' parameter must be 4 or 8. Got {connectivity!r} instead."
        )
    return ndi.generate_binary_structure(2, 2 if connectivity == 8 else 1)


def _as_truth(name: str, y: object) -> np.ndarray:
    """Boolean building mask from a bool / 0-1 / 0-255 array."""
    arr = np.asarray(y)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(
            f"The '{name}' parameter must be a numeric or bool array. Got {arr.dtype}."
        )
    return arr > 0.5


def _as_prediction(name: str, y: object, threshold: float) -> np.ndarray:
    """Boolean predicted mask: bool/int arrays as masks, float arrays as probabilities."""
    arr = np.asarray(y)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"The '{name}' parameter must be a numeric or bool array. Got {arr.dtype}."
        )
    _check_probabilities(name, arr)
    return arr >= threshold


def _check_probabilities(name: str, arr: np.ndarray) -> None:
    if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= 0.0 and arr.max() <= 1.0):
        raise ValueError(
            f"The '{name}' parameter must hold probabilities in [0, 1] (bool or int arrays are "
            f"read as masks). Got values in [{np.nanmin(arr)!r}, {np.nanmax(arr)!r}] instead."
        )


def _align(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Same shape, tolerating a trailing channel of 1 on either side ((N,H,W,1) vs (N,H,W))."""
    if a.shape != b.shape:
        a2 = a[..., 0] if a.ndim and a.shape[-1] == 1 and a.ndim > 2 else a
        b2 = b[..., 0] if b.ndim and b.shape[-1] == 1 and b.ndim > 2 else b
        if a2.shape != b2.shape:
            raise ValueError(
                f"The '{names[0]}' and '{names[1]}' parameters must have the same shape. "
                f"Got {a.shape} and {b.shape} instead."
            )
        a, b = a2, b2
    return a, b


def _as_2d(name: str, y: object) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(
            f"The '{name}' parameter must be a 2-D (H, W) array. Got shape {arr.shape}."
        )
    return arr


# --------------------------------------------------------------------------- pixel level


def pixel_confusion(
    y_true: object, y_prob_or_pred: object, threshold: float = 0.5
) -> dict[str, int]:
    """Pixel confusion counts ``tp, fp, fn, tn`` over one mask or a batch of masks.

    Shapes (H, W), (N, H, W) and a trailing channel of 1 are accepted; ``threshold`` applies
    only to float probabilities (see the module conventions).
    """
    threshold = _check_fraction("threshold", threshold)
    t = _as_truth("y_true", y_true)
    p = _as_prediction("y_prob_or_pred", y_prob_or_pred, threshold)
    t, p = _align(t, p, ("y_true", "y_prob_or_pred"))
    tp = int(np.count_nonzero(t & p))
    n_true = int(np.count_nonzero(t))
    n_pred = int(np.count_nonzero(p))
    fp, fn = n_pred - tp, n_true - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(t.size) - tp - fp - fn}


def _ratio(num: np.ndarray, den: np.ndarray, when_empty: np.ndarray) -> np.ndarray:
    """``num / den`` with ``when_empty`` where ``den == 0`` (no division warnings)."""
    out = np.asarray(when_empty, dtype=float).copy()
    np.divide(num, den, out=out, where=den > 0)
    return out


def _scores_arrays(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Vectorised scores with the module's empty-tile convention; one source of truth."""
    tp, fp, fn, tn = (np.asarray(v, dtype=float) for v in (tp, fp, fn, tn))
    empty = (tp + fp + fn) == 0
    one_if_empty = np.where(empty, 1.0, 0.0)
    return {
        "precision": _ratio(tp, tp + fp, one_if_empty),
        "recall": _ratio(tp, tp + fn, one_if_empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, one_if_empty),
        "iou": _ratio(tp, tp + fp + fn, one_if_empty),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, np.ones_like(tp)),
        "empty": empty,
    }


def pixel_scores(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | bool]:
    """Precision, recall, F1, IoU and accuracy from confusion counts, always finite.

    ``empty`` is True when there are no true and no predicted building pixels; the scores are
    then 1.0 (see the module conventions). Use as ``pixel_scores(**pixel_confusion(t, p))``.
    """
    for name, value in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn)):
        _check_int(name, value, 0)
    s = _scores_arrays(tp, fp, fn, tn)
    return {k: (bool(v) if k == "empty" else float(v)) for k, v in s.items()}


class PixelHistogram:
    """Streaming per-class histograms of predicted probabilities.

    Holds ``n_bins + 1`` counts for building and for background pixels, so a threshold sweep
    over a whole evaluation set costs O(n_bins) memory and never re-runs the model. Bin ``i``
    holds probabilities in ``[i / n_bins, (i + 1) / n_bins)``; the extra last bin holds exactly
    1.0, so thresholds on the ``1 / n_bins`` grid (including 0 and 1) are exact and others are
    rounded up to the next bin edge (error at most one bin).
    """

    def __init__(self, n_bins: int = 1000) -> None:
        self.n_bins = _check_int("n_bins", n_bins, 1)
        self.positive = np.zeros(self.n_bins + 1, dtype=np.int64)
        self.negative = np.zeros(self.n_bins + 1, dtype=np.int64)

    @property
    def n_pixels(self) -> int:
        return int(self.positive.sum() + self.negative.sum())

    @property
    def n_positive(self) -> int:
        return int(self.positive.sum())

    def update(self, y_true: object, y_prob: object) -> PixelHistogram:
        """Add one mask or batch; returns ``self`` so calls chain."""
        prob = np.asarray(y_prob)
        if not np.issubdtype(prob.dtype, np.floating):
            raise ValueError(
                f"The 'y_prob' parameter must be a float array of probabilities. Got {prob.dtype}."
            )
        _check_probabilities("y_prob", prob)
        truth, prob = _align(_as_truth("y_true", y_true), prob, ("y_true", "y_prob"))
        # float64 before scaling: float32 inputs then land in exact bins.
        idx = np.floor(prob.astype(np.float64, copy=False) * self.n_bins).astype(np.intp)
        np.clip(idx, 0, self.n_bins, out=idx)
        length = self.n_bins + 1
        self.positive += np.bincount(idx[truth], minlength=length)
        self.negative += np.bincount(idx[~truth], minlength=length)
        return self

    def merge(self, other: PixelHistogram) -> PixelHistogram:
        """Add another histogram's counts (e.g. from a worker); returns ``self``."""
        if not isinstance(other, PixelHistogram) or other.n_bins != self.n_bins:
            raise ValueError(
                "The 'other' parameter must be a PixelHistogram with n_bins="
                f"{self.n_bins}. Got {other!r} instead."
            )
        self.positive += other.positive
        self.negative += other.negative
        return self

    def _edge_index(self, thresholds: np.ndarray) -> np.ndarray:
        # Snap to the grid first so 0.30000000000000004 counts as edge 300, not 301.
        scaled = np.round(thresholds * self.n_bins, 6)
        return np.clip(np.ceil(scaled).astype(np.intp), 0, self.n_bins)

    def _counts(self, thresholds: np.ndarray) -> dict[str, np.ndarray]:
        # Pixels predicted positive at threshold t = bins at or above t's edge.
        pos_at_or_above = np.cumsum(self.positive[::-1])[::-1]
        neg_at_or_above = np.cumsum(self.negative[::-1])[::-1]
        k = self._edge_index(thresholds)
        tp = pos_at_or_above[k]
        fp = neg_at_or_above[k]
        return {
            "tp": tp,
            "fp": fp,
            "fn": self.positive.sum() - tp,
            "tn": self.negative.sum() - fp,
        }

    def confusion(self, threshold: float = 0.5) -> dict[str, int]:
        """Pixel confusion counts at one threshold, as :func:`pixel_confusion` returns them."""
        threshold = _check_fraction("threshold", threshold)
        c = self._counts(np.array([threshold]))
        return {k: int(v[0]) for k, v in c.items()}

    def scores(self, threshold: float = 0.5) -> dict[str, float | bool]:
        """:func:`pixel_scores` at one threshold."""
        return pixel_scores(**self.confusion(threshold))

    def curve(self, thresholds: object = None) -> dict[str, np.ndarray]:
        """Scores over a threshold sweep (default ``np.linspace(0, 1, 101)``).

        Keys: ``threshold, precision, recall, f1, iou, accuracy`` (float arrays) and the counts
        ``tp, fp, fn, tn`` (int arrays), all aligned with ``threshold``.
        """
        thr = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, float)
        if (
            thr.ndim != 1
            or not np.all(np.isfinite(thr))
            or thr.min(initial=0) < 0
            or thr.max(initial=0) > 1
        ):
            raise ValueError(
                "The 'thresholds' parameter must be a 1-D array of floats in [0, 1]. "
                f"Got {thresholds!r} instead."
            )
        counts = self._counts(thr)
        scores = _scores_arrays(**counts)
        scores.pop("empty")
        return {"threshold": thr, **scores, **{k: v.astype(np.int64) for k, v in counts.items()}}

    def best_threshold(self, metric: str = "f1", thresholds: object = None) -> float:
        """Threshold maximising ``metric`` (first one on ties) over the sweep."""
        allowed = ("f1", "iou", "accuracy", "precision", "recall")
        if metric not in allowed:
            raise ValueError(
                f"The 'metric' parameter must be one of {list(allowed)}. Got {metric!r} instead."
            )
        c = self.curve(thresholds)
        return float(c["threshold"][int(np.argmax(c[metric]))])

    def __repr__(self) -> str:
        return (
            f"PixelHistogram(n_bins={self.n_bins}, n_pixels={self.n_pixels}, "
            f"n_positive={self.n_positive})"
        )


def pr_curve(
    y_true: object, y_prob: object, thresholds: object = None, n_bins: int = 1000
) -> dict[str, np.ndarray]:
    """One-shot threshold sweep; see :meth:`PixelHistogram.curve` (use the class to stream)."""
    return PixelHistogram(n_bins).update(y_true, y_prob).curve(thresholds)


# --------------------------------------------------------------------------- overlay


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """The pixels of a boolean mask that touch a pixel outside it (4-connected): the outline that
    every overlay draws, so outlines look the same on thumbnails and on the pages."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def error_overlay(
    image: object,
    y_true: object,
    y_pred: object,
    alpha: float = 0.5,
    threshold: float = 0.5,
) -> np.ndarray:
    """RGB uint8 image with TP / FP / FN pixels tinted by :data:`ERROR_COLOURS`.

    ``image`` is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) in 0..255 (uint8 or float; alpha is
    dropped). ``alpha`` is the colour's weight in the blend; true negatives are left untouched.
    """
    alpha = _check_fraction("alpha", alpha)
    threshold = _check_fraction("threshold", threshold)
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "The 'image' parameter must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). "
            f"Got {np.asarray(image).shape} instead."
        )
    rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
    rgb = np.clip(rgb.astype(np.float32), 0, 255)
    t = _as_2d("y_true", _as_truth("y_true", y_true))
    p = _as_2d("y_pred", _as_prediction("y_pred", y_pred, threshold))
    t, p = _align(t, p, ("y_true", "y_pred"))
    if t.shape != rgb.shape[:2]:
        raise ValueError(
            f"The 'y_true' and 'image' parameters must have the same height and width. "
            f"Got {t.shape} and {rgb.shape[:2]} instead."
        )
    out = rgb.copy()
    for key, where in (("tp", t & p), ("fp", ~t & p), ("fn", t & ~p)):
        colour = np.asarray(ERROR_COLOURS[key], dtype=np.float32)
        out[where] = (1.0 - alpha) * rgb[where] + alpha * colour
    return np.rint(out).astype(np.uint8)


# --------------------------------------------------------------------------- building level


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 1..n in order of first value, 0 kept as background."""
    # lazy: scikit-image takes ~1 s to import; the Evaluate page imports this module at start
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels.astype(np.int64, copy=False))[0]


def _instances(
    name: str, mask: object, instances: object, min_area: int, structure: np.ndarray
) -> tuple[np.ndarray, int]:
    """Sequential labels 1..n of instances with ``area >= min_area`` (smaller ones -> 0)."""
    if instances is not None:
        lab = _as_2d(f"{name}_instances", instances)
        if not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
            raise ValueError(
                f"The '{name}_instances' parameter must be a non-negative int label image "
                f"(0 = background). Got dtype {lab.dtype} instead."
            )
        lab = _relabel(lab)
    else:
        if mask is None:
            raise ValueError(f"Either '{name}_mask' or '{name}_instances' must be given.")
        lab, _ = ndi.label(_as_2d(f"{name}_mask", mask), structure=structure)
    areas = np.bincount(lab.ravel())
    keep = areas >= min_area
    keep[0] = False
    remap = np.zeros(areas.size, dtype=np.int64)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    return remap[lab], int(keep.sum())


def building_scores(
    y_true_mask: object,
    y_pred_mask: object,
    iou_threshold: float = 0.5,
    min_area: int = 10,
    *,
    true_instances: object = None,
    pred_instances: object = None,
    connectivity: int = 8,
    threshold: float = 0.5,
) -> dict[str, object]:
    """Building-level detection scores (SpaceNet convention).

    Instances are connected components of each mask (or the given label images, e.g.
    ``true_instances`` from polygons, ``pred_instances`` from :func:`count_buildings`). Instances
    smaller than ``min_area`` pixels are ignored on both sides. Pairs are matched greedily
    one-to-one by decreasing IoU, keeping pairs with ``IoU >= iou_threshold``; matched pairs are
    TP, unmatched predictions FP, unmatched truths FN. Empty-tile convention as for pixels.

    Returns ``tp, fp, fn, precision, recall, f1, matched_ious`` (float array, one per TP) plus
    ``n_true, n_pred, empty`` and ``matches`` (``(true_label, pred_label, iou)`` tuples, labels
    as in ``true_labels`` / ``pred_labels``, the relabelled instance images).
    """
    iou_threshold = _check_fraction("iou_threshold", iou_threshold)
    if iou_threshold == 0.0:
        raise ValueError(
            "The 'iou_threshold' parameter must be a float in (0, 1]. Got 0.0 instead."
        )
    min_area = _check_int("min_area", min_area, 0)
    structure = _check_connectivity(connectivity)
    threshold = _check_fraction("threshold", threshold)
    true_mask = None if y_true_mask is None else _as_truth("y_true_mask", y_true_mask)
    pred_mask = (
        None if y_pred_mask is None else _as_prediction("y_pred_mask", y_pred_mask, threshold)
    )
    t_lab, n_true = _instances("true", true_mask, true_instances, min_area, structure)
    p_lab, n_pred = _instances("pred", pred_mask, pred_instances, min_area, structure)
    t_lab, p_lab = _align(t_lab, p_lab, ("y_true_mask", "y_pred_mask"))

    matches: list[tuple[int, int, float]] = []
    if n_true and n_pred:
        t_area = np.bincount(t_lab.ravel(), minlength=n_true + 1)
        p_area = np.bincount(p_lab.ravel(), minlength=n_pred + 1)
        both = (t_lab > 0) & (p_lab > 0)
        pair = t_lab[both] * (n_pred + 1) + p_lab[both]
        pair_ids, inter = np.unique(pair, return_counts=True)
        ti, pi = np.divmod(pair_ids, n_pred + 1)
        iou = inter / (t_area[ti] + p_area[pi] - inter)
        order = np.lexsort((pi, ti, -iou))  # best IoU first; ties by label for determinism
        used_t: set[int] = set()
        used_p: set[int] = set()
        for j in order:
            if iou[j] < iou_threshold:
                break
            a, b = int(ti[j]), int(pi[j])
            if a in used_t or b in used_p:
                continue
            used_t.add(a)
            used_p.add(b)
            matches.append((a, b, float(iou[j])))
    tp = len(matches)
    fp, fn = n_pred - tp, n_true - tp
    s = _scores_arrays(tp, fp, fn, 0)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": float(s["precision"]),
        "recall": float(s["recall"]),
        "f1": float(s["f1"]),
        "matched_ious": np.array([m[2] for m in matches], dtype=float),
        "n_true": n_true,
        "n_pred": n_pred,
        "empty": bool(s["empty"]),
        "matches": matches,
        "true_labels": t_lab,
        "pred_labels": p_lab,
    }


class BuildingCount(NamedTuple):
    """``(n, labels)``; unpacks as a pair, ``areas[i]`` is the pixel area of label ``i + 1``."""

    n: int
    labels: np.ndarray

    @property
    def areas(self) -> np.ndarray:
        return np.bincount(self.labels.ravel(), minlength=self.n + 1)[1:]


def count_buildings(
    pred_mask: object,
    *,
    split_touching: bool = True,
    min_area: int = 10,
    min_distance: int = 3,
    h: float = 1.0,
    connectivity: int = 8,
    threshold: float = 0.5,
) -> BuildingCount:
    """Count buildings in a predicted mask; touching buildings are split by a watershed.

    Components smaller than ``min_area`` are dropped as noise. With ``split_touching``, markers
    are peaks of the distance transform (``peak_local_max`` with ``min_distance``) grouped by
    the h-maxima regions they fall in: a peak must rise ``h`` pixels above the saddle to its
    neighbour to seed a building, so elongated or L-shaped buildings (whose distance ridge is a
    plateau) stay whole while two blobs joined by a neck are split. Watershed fragments smaller
    than ``min_area`` are merged back into a neighbour.
    """
    from skimage.feature import peak_local_max  # lazy: see _relabel
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    min_area = _check_int("min_area", min_area, 0)
    min_distance = _check_int("min_distance", min_distance, 1)
    if isinstance(h, bool) or not isinstance(h, Real) or not np.isfinite(h) or h <= 0:
        raise ValueError(f"The 'h' parameter must be a positive float. Got {h!r} instead.")
    structure = _check_connectivity(connectivity)
    threshold = _check_fraction("threshold", threshold)
    mask = _as_2d("pred_mask", _as_prediction("pred_mask", pred_mask, threshold))

    comp, _ = _instances("pred", mask, None, min_area, structure)
    n = int(comp.max(initial=0))
    if not split_touching or n == 0:
        return BuildingCount(n, comp)

    mask = comp > 0
    dist = ndi.distance_transform_edt(mask)
    regions, _ = ndi.label(h_maxima(dist, float(h)).astype(bool) & mask, structure=structure)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comp, exclude_border=False)
    seeded = np.unique(regions[tuple(peaks.T)]) if len(peaks) else np.array([], dtype=int)
    seeded = seeded[seeded > 0]
    markers = np.where(np.isin(regions, seeded), regions, 0)
    # Every component needs a marker, or the watershed would erase it (e.g. 1-pixel-wide parts).
    unseeded = np.setdiff1d(np.arange(1, n + 1), np.unique(comp[markers > 0]))
    if unseeded.size:
        offset = markers.max(initial=0)
        lookup = np.zeros(n + 1, dtype=markers.dtype)
        lookup[unseeded] = offset + np.arange(1, unseeded.size + 1)
        markers = np.where(markers > 0, markers, lookup[comp])
    ws_conn = 2 if connectivity == 8 else 1
    labels = watershed(-dist, markers, mask=mask, connectivity=ws_conn)

    # Drop markers of fragments below min_area (keeping each component's largest) and re-flood.
    areas = np.bincount(labels.ravel())
    small = np.flatnonzero((areas < min_area) & (areas > 0))
    small = small[small > 0]
    if small.size:
        owner = np.zeros(areas.size, dtype=np.int64)
        owner[labels.ravel()] = comp.ravel()
        drop = []
        for lab in small:
            siblings = np.flatnonzero(owner == owner[lab])
            if siblings[np.argmax(areas[siblings])] != lab:
                drop.append(lab)
        if drop:
            markers = np.where(np.isin(labels, drop), 0, np.where(markers > 0, labels, 0))
            labels = watershed(-dist, markers, mask=mask, connectivity=ws_conn)
    labels = _relabel(labels)
    return BuildingCount(int(labels.max(initial=0)), labels)
