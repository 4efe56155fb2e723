"""K-means over embedding vectors, and how well clusters agree with known tile labels.

Plain numpy/scikit-learn/pandas code (no Dash, Flask or TensorFlow).

- ``kmeans_sweep`` fits one K-means per k (elbow + mean silhouette) with sklearn ``KMeans``; above
  ``minibatch_threshold`` points (50 000) it switches to ``MiniBatchKMeans``, whose cost does not
  grow with n per iteration, and records which one ran.
- Mean silhouette costs O(n^2) distances, so above ``silhouette_sample`` points it is computed on a
  seeded sample (sklearn's own ``sample_size``/``random_state`` draw: the same points for every k,
  so values stay comparable across k).
- ``cluster_label_agreement`` reproduces the thesis's table: each cluster is mapped to its majority
  true label, then macro precision/recall of that mapping, accuracy, ARI and NMI.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import __version__ as sklearn_version
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
    precision_score,
    recall_score,
    silhouette_samples,
    silhouette_score,
)
from sklearn.utils import check_random_state

__all__ = [
    "MINIBATCH_THRESHOLD",
    "SweepResult",
    "agreement_table",
    "cluster_label_agreement",
    "fit_kmeans",
    "kmeans_sweep",
    "nearest_to_centroid",
    "silhouette_per_sample",
    "validate_k",
]

#: Above this many points the sweep uses MiniBatchKMeans instead of KMeans.
MINIBATCH_THRESHOLD = 50_000
#: MiniBatchKMeans batch size (sklearn's default is 1024; larger batches give steadier centroids).
MINIBATCH_BATCH_SIZE = 4096


def _param_error(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"The {name!r} parameter must be {expected}. Got {got!r} instead.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_k(k: Any, low: int = 2, high: int = 50) -> int:
    """Return ``k`` as an int if it is an integer in [low, high], else raise ValueError."""
    if not _is_int(k) or not low <= k <= high:
        raise _param_error("k", f"an int in [{low}, {high}]", k)
    return int(k)


def _check_random_state(random_state: Any) -> int | None:
    if random_state is not None and (not _is_int(random_state) or not 0 <= random_state < 2**32):
        raise _param_error("random_state", "an int in [0, 4294967295] or None", random_state)
    return None if random_state is None else int(random_state)


def _check_X(X: Any, min_samples: int = 1) -> np.ndarray:
    """A finite 2-D float array (float32 kept so results match sklearn on the same input)."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "fiub":
        raise _param_error("X", "a 2-D array of finite floats", f"an array of dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise _param_error("X", "a 2-D array of finite floats", f"an array of shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise _param_error("X", f"an array with at least {min_samples} rows", f"{arr.shape[0]} rows")
    if not np.isfinite(arr).all():
        raise _param_error("X", "a 2-D array of finite floats", "an array with NaN or inf")
    return arr


def _check_labels(labels: Any, n: int | None = None, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _param_error(name, "a 1-D array of ints", f"an array of shape {arr.shape} "
                           f"and dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise _param_error(name, f"an array of length {n} (one label per row of X)", arr.shape[0])
    return arr


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [None if v is None or math.isnan(v) else float(v) for v in values]


@dataclass
class SweepResult:
    """One K-means per k: elbow (``inertia``), mean ``silhouette``, labels and centroids.

    ``silhouette`` is NaN where it is undefined (fewer than 2 clusters in the sample).
    ``best_k`` is the k with the highest mean silhouette (the smallest such k on ties; None when
    every silhouette is NaN).
    """

    k: list[int]
    inertia: list[float]
    silhouette: list[float]
    labels: dict[int, np.ndarray] = field(repr=False)
    centroids: dict[int, np.ndarray] = field(repr=False)
    best_k: int | None
    params: dict[str, Any]

    def sizes(self, k: int) -> list[int]:
        """Number of points in each cluster for one k."""
        return np.bincount(self.labels[k], minlength=k).tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-point labels, no centroids)."""
        return {
            "k": [int(k) for k in self.k],
            "inertia": _nan_to_none(self.inertia),
            "silhouette": _nan_to_none(self.silhouette),
            "best_k": self.best_k,
            "sizes": {str(k): self.sizes(k) for k in self.k},
            "params": dict(self.params),
        }


def fit_kmeans(
    X: np.ndarray,
    k: int,
    *,
    random_state: int | None = 0,
    n_init: int | str = "auto",
    minibatch: bool = False,
    batch_size: int | None = None,
) -> Any:
    """One fitted K-means of ``k`` clusters, the way the sweep fits each k: sklearn ``KMeans``,
    or ``MiniBatchKMeans`` (``batch_size``, default ``MINIBATCH_BATCH_SIZE``) for big runs.
    The same seed, ``n_init`` and algorithm give the same labels as the sweep's."""
    if minibatch:
        model = MiniBatchKMeans(n_clusters=k, random_state=random_state, n_init=n_init,
                                batch_size=batch_size or MINIBATCH_BATCH_SIZE)
    else:
        model = KMeans(n_clusters=k, random_state=random_state, n_init=n_init)
    return model.fit(X)


def kmeans_sweep(
    X: Any,
    k_values: Iterable[int] = range(2, 11),
    *,
    random_state: int | None = 0,
    n_init: int | str = "auto",
    silhouette_sample: int | None = 10_000,
    minibatch_threshold: int = MINIBATCH_THRESHOLD,
) -> SweepResult:
    """Fit K-means for each k in ``k_values`` and score it (elbow + mean silhouette)."""
    X = _check_X(X, min_samples=3)
    n = X.shape[0]
    if isinstance(k_values, (str, bytes)) or not isinstance(k_values, Iterable):
        raise _param_error("k_values", "an iterable of ints in [2, 50]", k_values)
    ks = sorted({validate_k(k) for k in k_values})
    if not ks:
        raise _param_error("k_values", "a non-empty iterable of ints in [2, 50]", k_values)
    if ks[-1] > n - 1:
        # Silhouette is only defined for 2 <= k <= n - 1.
        raise _param_error("k_values", f"ints <= n_samples - 1 = {n - 1}", ks)
    random_state = _check_random_state(random_state)
    if not (n_init == "auto" or (_is_int(n_init) and n_init >= 1)):
        raise _param_error("n_init", "'auto' or an int >= 1", n_init)
    if silhouette_sample is not None and (not _is_int(silhouette_sample) or silhouette_sample < 2):
        raise _param_error("silhouette_sample", "an int >= 2 or None", silhouette_sample)
    if not _is_int(minibatch_threshold) or minibatch_threshold < 1:
        raise _param_error("minibatch_threshold", "an int >= 1", minibatch_threshold)

    use_minibatch = n > minibatch_threshold
    sampled = silhouette_sample is not None and n > silhouette_sample
    sample_size = silhouette_sample if sampled else None
    # silhouette_score draws its sample with random_state.permutation(n): an int seed draws the
    # same points for every k. Without a seed, draw one seed so all k still share the sample.
    sil_seed = random_state if random_state is not None else int(
        np.random.default_rng().integers(2**32 - 1))

    inertia: list[float] = []
    silhouette: list[float] = []
    labels: dict[int, np.ndarray] = {}
    centroids: dict[int, np.ndarray] = {}
    for k in ks:
        model = fit_kmeans(X, k, random_state=random_state, n_init=n_init,
                           minibatch=use_minibatch)
        lab = model.labels_.astype(np.int32)
        labels[k] = lab
        centroids[k] = np.asarray(model.cluster_centers_)
        inertia.append(float(model.inertia_))
        try:
            sil = silhouette_score(X, lab, sample_size=sample_size, random_state=sil_seed)
        except ValueError:  # a single cluster in the sample (or a sample of singletons)
            sil = float("nan")
        silhouette.append(float(sil))

    finite = [s for s in silhouette if not math.isnan(s)]
    best_k = ks[silhouette.index(max(finite))] if finite else None
    params = {
        "k_values": ks,
        "random_state": random_state,
        "n_init": n_init,
        "algorithm": "minibatch_kmeans" if use_minibatch else "kmeans",
        "minibatch_threshold": int(minibatch_threshold),
        "batch_size": MINIBATCH_BATCH_SIZE if use_minibatch else None,
        "silhouette_sample": silhouette_sample,
        "silhouette_sample_size": sample_size,  # None: every point was used
        "silhouette_random_state": sil_seed if sample_size is not None else None,
        "metric": "euclidean",
        "n_samples": int(n),
        "n_features": int(X.shape[1]),
        "scikit-learn": sklearn_version,
    }
    return SweepResult(
        k=ks,
        inertia=inertia,
        silhouette=silhouette,
        labels=labels,
        centroids=centroids,
        best_k=best_k,
        params=params,
    )


def silhouette_per_sample(
    X: Any,
    labels: Any,
    *,
    sample: int | None = None,
    random_state: int | None = 0,
) -> np.ndarray:
    """Silhouette of every point, shape (n,); with ``sample`` only a seeded sample is scored.

    Points outside the sample are NaN. The sample is drawn like ``silhouette_score``'s (and so like
    ``kmeans_sweep``'s), so with the same seed ``np.nanmean`` of the result equals the sweep's
    mean silhouette. Silhouettes in a sample are measured against the sample's points only.
    """
    X = _check_X(X, min_samples=2)
    n = X.shape[0]
    labels = _check_labels(labels, n)
    random_state = _check_random_state(random_state)
    if sample is not None and (not _is_int(sample) or sample < 2):
        raise _param_error("sample", "an int >= 2 or None", sample)
    out = np.full(n, np.nan, dtype=np.float64)
    if sample is None or n <= sample:
        idx = np.arange(n)
    else:
        idx = check_random_state(random_state).permutation(n)[:sample]
    n_labels = np.unique(labels[idx]).size
    if not 2 <= n_labels <= idx.size - 1:
        raise ValueError(
            f"Silhouette needs 2 to n_samples - 1 clusters; the {'sample' if sample else 'data'}"
            f" has {n_labels} cluster(s) for {idx.size} points."
        )
    out[idx] = silhouette_samples(X[idx], labels[idx])
    return out


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and pandas NA-like floats
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def cluster_label_agreement(
    labels: Any,
    truth: Any,
    *,
    exclude: Iterable[Any] = (),
) -> dict[str, Any]:
    """How well clusters match known labels (the thesis's table).

    Each cluster is mapped to its majority true label (ties: the label that sorts first); then
    macro ``precision``/``recall`` of the mapped labels against the truth (``zero_division=0``:
    a class no cluster maps to scores 0), ``accuracy``, and the mapping-free
    ``ari`` (adjusted Rand) and ``nmi`` (normalised mutual information). ``truth`` may hold
    strings or ints; entries that are None/NaN or in ``exclude`` (e.g. "unknown") are left out.
    """
    labels = _check_labels(labels)
    truth_arr = np.asarray(truth, dtype=object)
    if truth_arr.ndim != 1 or truth_arr.shape[0] != labels.shape[0]:
        raise _param_error(
            "truth", f"a 1-D array of length {labels.shape[0]} (one per label)",
            f"shape {truth_arr.shape}",
        )
    excluded = {_plain(v) for v in exclude}
    keep = np.array(
        [not _is_missing(v) and _plain(v) not in excluded for v in truth_arr], dtype=bool
    )
    if not keep.any():
        raise ValueError("No labelled entries left in 'truth' after removing missing/excluded.")
    lab = labels[keep]
    truth_kept = np.array([_plain(v) for v in truth_arr[keep]], dtype=object)
    try:
        classes, truth_idx = np.unique(truth_kept, return_inverse=True)
    except TypeError:  # mixed types (e.g. ints and strings) do not sort: compare as strings
        classes, truth_idx = np.unique(truth_kept.astype(str), return_inverse=True)
    clusters, cluster_idx = np.unique(lab, return_inverse=True)
    contingency = np.zeros((clusters.size, classes.size), dtype=np.int64)
    np.add.at(contingency, (cluster_idx, truth_idx), 1)
    majority = contingency.argmax(axis=1)  # first maximum = the label that sorts first
    pred_idx = majority[cluster_idx]
    class_ids = np.arange(classes.size)
    return {
        "precision": float(precision_score(
            truth_idx, pred_idx, labels=class_ids, average="macro", zero_division=0)),
        "recall": float(recall_score(
            truth_idx, pred_idx, labels=class_ids, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth_idx, pred_idx)),
        "ari": float(adjusted_rand_score(truth_idx, cluster_idx)),
        "nmi": float(normalized_mutual_info_score(truth_idx, cluster_idx)),
        "mapping": {int(c): _plain(classes[m]) for c, m in zip(clusters, majority, strict=True)},
        "classes": [_plain(c) for c in classes],
        "n_clusters": int(clusters.size),
        "n_classes": int(classes.size),
        "n_samples": int(keep.sum()),
        "n_excluded": int((~keep).sum()),
    }


AGREEMENT_COLUMNS = ("k", "silhouette", "inertia", "precision", "recall", "accuracy", "ari", "nmi")


def agreement_table(
    sweep: SweepResult,
    truth: Any,
    X: Any = None,
    *,
    exclude: Iterable[Any] = (),
) -> pd.DataFrame:
    """One row per k of ``sweep``: k, silhouette, inertia, precision, recall, accuracy, ari, nmi.

    ``X`` (optional) is only used to check that the sweep was run on as many rows as ``truth``.
    """
    n = int(sweep.params["n_samples"])
    if X is not None and np.shape(X)[0] != n:
        raise _param_error("X", f"the {n} rows the sweep was fitted on", f"{np.shape(X)[0]} rows")
    exclude = tuple(exclude)
    rows = []
    for k, sil, inertia in zip(sweep.k, sweep.silhouette, sweep.inertia, strict=True):
        agree = cluster_label_agreement(sweep.labels[k], truth, exclude=exclude)
        rows.append({
            "k": int(k),
            "silhouette": sil,
            "inertia": inertia,
            **{key: agree[key] for key in ("precision", "recall", "accuracy", "ari", "nmi")},
        })
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def nearest_to_centroid(
    X: Any,
    labels: Any,
    centroids: Any,
    cluster: int,
    n: int = 8,
) -> np.ndarray:
    """Indices (into X) of the ``n`` members of ``cluster`` closest to its centroid, nearest first.

    The "typical tiles" of a cluster. Fewer are returned when the cluster is smaller.
    """
    X = _check_X(X)
    labels = _check_labels(labels, X.shape[0])
    centroids = np.asarray(centroids, dtype=np.float64)
    if centroids.ndim != 2 or centroids.shape[1] != X.shape[1]:
        raise _param_error(
            "centroids", f"an array of shape (k, {X.shape[1]})", f"shape {centroids.shape}"
        )
    if not _is_int(cluster) or not 0 <= cluster < centroids.shape[0]:
        raise _param_error("cluster", f"an int in [0, {centroids.shape[0] - 1}]", cluster)
    if not _is_int(n) or n < 1:
        raise _param_error("n", "an int >= 1", n)
    members = np.flatnonzero(labels == cluster)
    dist = np.linalg.norm(X[members] - centroids[cluster], axis=1)
    order = np.argsort(dist, kind="stable")[:n]
    return members[order].astype(np.int64)
