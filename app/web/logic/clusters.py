"""The clusters page's back end: K-means labels for any k, silhouettes, cluster summaries and
how well clusters match a truth label.

Callbacks (and the API) call the ``cached_*`` wrappers, which memoize on (run id, run version,
k) in the shared flask-caching cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from app.ml.apply import recluster
from app.ml.cluster import silhouette_per_sample
from app.web import runs
from app.web.cache import cache
from app.web.logic.tiles import _num, damage_columns, damage_name

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from app.artifacts import EmbeddingsRun

#: At most this many tiles enter a per-sample silhouette computed on request (O(n²)).
SILHOUETTE_SAMPLE = 4000
K_RANGE = tuple(range(2, 11))


# --------------------------------------------------------------------------- clusters


def k_choices(run: EmbeddingsRun) -> list[int]:
    """k values offered: 2..10 plus every k of the stored sweep."""
    ks = set(K_RANGE)
    if run.sweep:
        ks |= {int(k) for k in run.sweep.get("k", [])}
    return sorted(ks)


def default_k(run: EmbeddingsRun) -> int:
    """The run's chosen k (else its best k, else 4)."""
    sweep = run.sweep or {}
    for key in ("chosen_k", "best_k"):
        if isinstance(sweep.get(key), int):
            return int(sweep[key])
    if "cluster" in run.tiles:
        return int(run.tiles["cluster"].nunique())
    return 4


def labels_for_k(run: EmbeddingsRun, k: int) -> tuple[np.ndarray, str]:
    """K-means labels for ``k`` and where they came from.

    Stored sweep labels first, then the stored ``cluster`` column (chosen k), then
    ``app.ml.apply.recluster`` (the one K-means fit of the package).
    """
    k = int(k)
    sweep, labels = run.sweep or {}, run.sweep_labels
    ks = [int(v) for v in sweep.get("k", [])]
    if labels is not None and k in ks and ks.index(k) < len(labels):
        return np.asarray(labels[ks.index(k)], dtype=np.int32), "stored sweep"
    if "cluster" in run.tiles and sweep.get("chosen_k") == k:
        return run.tiles["cluster"].to_numpy(dtype=np.int32), "stored"
    return np.asarray(recluster(run, k), dtype=np.int32), "re-clustered"


def silhouette_values(
    run: EmbeddingsRun, labels: np.ndarray, k: int, max_samples: int = SILHOUETTE_SAMPLE,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(rows, per-sample silhouette, exact) for these labels.

    The stored ``silhouette`` column when ``labels`` are the stored clusters (its finite rows:
    ``reduce`` scores a sample of large runs); otherwise computed on the vectors (Euclidean,
    like the sweep) for at most the sweep's silhouette sample size (else ``max_samples``) tiles
    drawn with the sweep's seed, since it costs O(n²). ``exact`` is True when every tile is in.
    """
    tiles = run.tiles
    n = len(labels)
    if "silhouette" in tiles and "cluster" in tiles and np.array_equal(
        tiles["cluster"].to_numpy(), labels
    ):
        stored = tiles["silhouette"].to_numpy(dtype=np.float64)
        rows = np.flatnonzero(np.isfinite(stored))
        if rows.size >= 2:
            return rows, stored[rows].astype(np.float32), rows.size == n
    kparams = (run.sweep or {}).get("params") or {}
    sample = kparams.get("silhouette_sample") or max_samples
    sample = int(min(sample, max_samples))
    if seed is None:
        seed = int(kparams.get("random_state", (run.sweep or {}).get("random_state", 0)) or 0)
    if len(np.unique(labels)) < 2:
        return np.arange(n), np.zeros(n, np.float32), True
    data = runs.vectors(run).data
    try:
        values = silhouette_per_sample(data, labels, sample=sample if n > sample else None,
                                       random_state=seed)
    except ValueError:  # a sample with one cluster: silhouette undefined
        return np.arange(0), np.zeros(0, np.float32), False
    rows = np.flatnonzero(np.isfinite(values))
    return rows, values[rows].astype(np.float32), rows.size == n


def cluster_summaries(
    tiles: pd.DataFrame, labels: np.ndarray, data: np.ndarray, n_nearest: int = 4
) -> list[dict[str, Any]]:
    """One dict per cluster: size, share, mean metrics, damage mix, and member rows ordered by
    distance to the centroid in the embedding space (``order``; ``nearest`` = the first few)."""
    out = []
    n = len(labels)
    dmg_cols = damage_columns(tiles)
    for c in sorted(int(v) for v in np.unique(labels)):
        members = np.flatnonzero(labels == c)
        sub = tiles.iloc[members]
        centroid = data[members].mean(axis=0)
        dist = np.linalg.norm(data[members] - centroid, axis=1)
        order = members[np.argsort(dist, kind="stable")]
        means = {}
        for col in ("true_fraction", "pred_fraction", "precision", "recall", "iou", "f1"):
            if col in sub:
                vals = sub[col].to_numpy(dtype=float)
                means[col] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
        damage = {damage_name(col): int(sub[col].fillna(0).sum()) for col in dmg_cols}
        out.append({
            "cluster": c, "size": int(len(members)), "share": len(members) / max(n, 1),
            "means": means, "damage": damage, "order": order.tolist(),
            "nearest": [str(tiles["tile_id"].iat[i]) for i in order[:n_nearest]],
        })
    return out


def has_building_truth(tiles: pd.DataFrame, threshold: float = 0.01) -> np.ndarray | None:
    """Per tile True/False "has a building" from the truth mask, NaN-free rows only (else None)."""
    if "true_fraction" not in tiles:
        return None
    frac = tiles["true_fraction"].to_numpy(dtype=float)
    if not np.isfinite(frac).any():
        return None
    return np.where(np.isfinite(frac), frac > threshold, np.nan)


LABEL_NAMES = {
    "has_building": "has building", "phase": "phase (pre / post)", "disaster": "disaster",
    "disaster_type": "disaster type", "split": "split", "dominant_damage": "dominant damage",
}


def agreement_tables(run: EmbeddingsRun) -> dict[str, list[dict[str, Any]]]:
    """Per truth label, one row per k: silhouette and how well clusters match that label.

    ``sweep["agreement"]`` as ``reduce`` stores it (``{label: [{k, silhouette, inertia,
    precision, recall, accuracy, ari, nmi}, ...]}``, each cluster mapped to its majority label,
    macro precision / recall), or a plain list of rows. Without it, computed here from the stored
    sweep labels against "has building" (true building fraction > 1 %).
    """
    sweep = run.sweep or {}
    stored = sweep.get("agreement")
    if isinstance(stored, list) and stored and all(isinstance(r, dict) for r in stored):
        return {str(stored[0].get("label", "label")): [dict(r) for r in stored]}
    if isinstance(stored, dict) and stored:
        out = {str(name): [dict(r) for r in rows] for name, rows in stored.items()
               if isinstance(rows, list) and all(isinstance(r, dict) for r in rows)}
        if out:
            return out
    rows = _computed_agreement(run)
    return {"has_building": rows} if rows else {}


def _computed_agreement(run: EmbeddingsRun) -> list[dict[str, Any]]:
    sweep = run.sweep or {}
    labels = run.sweep_labels
    truth = has_building_truth(run.tiles)
    ks = [int(v) for v in sweep.get("k", [])]
    if labels is None or truth is None or not ks:
        return []
    # scikit-learn's metrics take ~2 s to import: only when a run stores no agreement table
    from sklearn.metrics import precision_score, recall_score

    known = np.isfinite(truth)
    y = truth[known].astype(int)
    sil = list(sweep.get("silhouette", []))
    rows = []
    for i, k in enumerate(ks):
        lab = np.asarray(labels[i])[known]
        guess = np.zeros(len(lab), int)
        for c in np.unique(lab):
            m = lab == c
            guess[m] = int(y[m].mean() > 0.5)  # majority label, ties → "no building"
        rows.append({
            "k": k,
            "silhouette": _num(sil[i]) if i < len(sil) else None,
            "precision": float(precision_score(y, guess, average="macro", zero_division=0)),
            "recall": float(recall_score(y, guess, average="macro", zero_division=0)),
        })
    return rows


# --------------------------------------------------------------------------- cached wrappers


@cache.memoize()
def cached_labels(run_id: str, version: str, k: int) -> tuple[np.ndarray, str] | None:
    """``labels_for_k`` memoized per (run id, run version, k)."""
    run = runs.get_run(run_id)
    return None if run is None else labels_for_k(run, k)


@cache.memoize()
def cached_silhouette(run_id: str, version: str, k: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``silhouette_values`` memoized per (run id, run version, k)."""
    run = runs.get_run(run_id)
    labelled = cached_labels(run_id, version, k)
    if run is None or labelled is None:
        return None
    return silhouette_values(run, labelled[0], k)


@cache.memoize()
def cached_summaries(run_id: str, version: str, k: int) -> list[dict[str, Any]] | None:
    """``cluster_summaries`` memoized per (run id, run version, k)."""
    run = runs.get_run(run_id)
    labelled = cached_labels(run_id, version, k)
    if run is None or labelled is None:
        return None
    return cluster_summaries(run.tiles, labelled[0], runs.vectors(run).data)

