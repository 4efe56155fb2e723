"""Out-of-distribution guard: is an image unlike every tile the model was trained on?

The embeddings of a run already say where the model has been. :func:`fit_ood` keeps the training
tiles' vectors as a nearest-neighbour index and the k-NN distances of the held-out (val / test)
tiles to that index as a calibration distribution: tiles of locations the model never saw but
that come from the same source. A new vector's **score** is the percentile of its k-NN distance
in that distribution (0-100): above ``params["percentile"]`` (99 by default) it is farther from
the training tiles than 99 % of held-out tiles are, and its mask should not be trusted.

- Transform (``transform="log"``, the default): each value becomes ``log1p(max(x, 0) / o)``
  with ``o = log_scale × the mean training value``. Post-ReLU channel means are heavy-tailed;
  on the raw values a few strong channels decide every distance, after the log whether a
  channel fires at all counts too. Measured (``bench/ood.py``, BENCHMARKS.md): on the demo
  model, real xBD tiles vs unseen synthetic ones, AUROC 0.83 raw → 0.96 with the log.
- Distance: the mean of the ``k`` nearest training distances, in one of ``METRICS``: cosine
  (1 - cosine similarity), Euclidean, or Mahalanobis (Euclidean after whitening with a
  Ledoit-Wolf covariance of the training vectors, so no direction of a few dominant channels
  decides alone).
- Representation: the run's own vectors, or another pooling of the same layer (``gap``,
  ``avgmax`` = GAP+GMP), recomputed from the run's stored full-resolution tiles
  (:func:`vectors_from_stored_tiles`) when it differs from the run's.
- Stored tiles: held-out tiles are scored against the calibration (their own distance
  included); training tiles leave themselves out of their neighbours (else every distance
  is 0), so their scores say how typical they are of the rest of the training set.
- An upload (:func:`score_image`) is cut into tiles of the run's tile size, as the stored tiles
  were, each tile scored, and the image's distance is the mean of its tiles' distances: the
  noise of single tiles averages out (no unseen synthetic scene of the bench came near the 99th
  percentile; their maximum was 94.8), while the far tiles of a real scene pull it up (61 % of
  the 158 real xBD scenes flagged, against 54 % with the median, and a 1-in-7 false alarm
  risk with the maximum tile).

Plain numpy and scikit-learn: no Dash. Stored by ``app.artifacts`` (``ood/`` of the run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from app.artifacts import EmbeddingsRun

__all__ = [
    "DEFAULTS", "METRICS", "REPRESENTATIONS", "TRANSFORMS", "OODIndex", "OODScores", "fit_ood",
    "fit_ood_index", "image_tiles", "load_ood", "run_tile_size", "score_image", "scores_table",
    "tile_vectors", "trained_on", "validate_params", "vectors_from_stored_tiles",
]

METRICS: tuple[str, ...] = ("cosine", "euclidean", "mahalanobis")
TRANSFORMS: tuple[str, ...] = ("log", "none")
REPRESENTATIONS: tuple[str, ...] = ("gap", "avgmax")
#: The parameters of a fit; :func:`validate_params` checks each one. ``representation`` None
#: means the run's own vectors. Chosen by ``bench/ood.py`` (BENCHMARKS.md, "ood"): GAP of the bottleneck (the run's own
#: vectors), log transform, Mahalanobis, k = 5 separated real xBD tiles from unseen synthetic
#: ones best at the 99th percentile (AUROC 0.957; 57 % of real tiles and 0 % of unseen
#: synthetic ones flagged).
DEFAULTS: dict[str, Any] = {
    "k": 5,
    "metric": "mahalanobis",
    "representation": None,
    "transform": "log",
    "log_scale": 0.1,
    "percentile": 99.0,
    "train_splits": ["train"],
    "calibration_splits": ["val", "test"],
    "max_train": 50_000,
    "random_state": 0,
}
_CHUNK = 2048
_CHUNK_CELLS = 8_000_000


def validate_params(params: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``params`` and ``overrides``, each value checked; raises
    ValueError naming the parameter and what was expected."""
    out = {**DEFAULTS, **(params or {}), **overrides}
    unknown = sorted(set(out) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown OOD parameter(s) {unknown}; expected some of {list(DEFAULTS)}.")
    k = out["k"]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= 50:
        raise ValueError(f"The 'k' parameter must be an int in [1, 50]. Got {k!r} instead.")
    out["k"] = int(k)
    if out["metric"] not in METRICS:
        raise ValueError(f"The 'metric' parameter must be one of {list(METRICS)}. "
                         f"Got {out['metric']!r} instead.")
    rep = out["representation"]
    if rep is not None and rep not in REPRESENTATIONS:
        raise ValueError(f"The 'representation' parameter must be None (the run's vectors) or "
                         f"one of {list(REPRESENTATIONS)}. Got {rep!r} instead.")
    if out["transform"] not in TRANSFORMS:
        raise ValueError(f"The 'transform' parameter must be one of {list(TRANSFORMS)}. "
                         f"Got {out['transform']!r} instead.")
    ls = out["log_scale"]
    if isinstance(ls, bool) or not isinstance(ls, int | float) or not 0 < float(ls) <= 10:
        raise ValueError(f"The 'log_scale' parameter must be a number in (0, 10]. "
                         f"Got {ls!r} instead.")
    out["log_scale"] = float(ls)
    pct = out["percentile"]
    if isinstance(pct, bool) or not isinstance(pct, int | float) or not 50 <= float(pct) < 100:
        raise ValueError(f"The 'percentile' parameter must be a number in [50, 100). "
                         f"Got {pct!r} instead.")
    out["percentile"] = float(pct)
    for name in ("train_splits", "calibration_splits"):
        splits = out[name]
        if (isinstance(splits, str) or not isinstance(splits, Sequence) or not splits
                or not all(isinstance(s, str) and s for s in splits)):
            raise ValueError(f"The '{name}' parameter must be a non-empty list of split names. "
                             f"Got {splits!r} instead.")
        out[name] = list(splits)
    if set(out["train_splits"]) & set(out["calibration_splits"]):
        raise ValueError("The 'train_splits' and 'calibration_splits' parameters must not share "
                         f"a split. Got {out['train_splits']} and {out['calibration_splits']}.")
    mt = out["max_train"]
    if isinstance(mt, bool) or not isinstance(mt, int | np.integer) or int(mt) < 10:
        raise ValueError(f"The 'max_train' parameter must be an int >= 10. Got {mt!r} instead.")
    out["max_train"] = int(mt)
    rs = out["random_state"]
    if isinstance(rs, bool) or not isinstance(rs, int | np.integer):
        raise ValueError(f"The 'random_state' parameter must be an int. Got {rs!r} instead.")
    out["random_state"] = int(rs)
    return out


@dataclass
class OODScores:
    """Scores of some vectors: k-NN distance, percentile score (0-100), nearest training rows
    (indices into ``OODIndex.train_ids``, nearest first) and their distances."""

    distance: np.ndarray
    score: np.ndarray
    nearest: np.ndarray
    nearest_distance: np.ndarray


@dataclass
class OODIndex:
    """A fitted guard: the training vectors (in the metric's space), the calibration distances
    and the parameters. ``transform`` maps a vector of the run's representation into the space
    the index searches."""

    params: dict[str, Any]
    train_ids: np.ndarray  # (n_train,) str
    train_vectors: np.ndarray  # (n_train, d) float32, already transformed
    calibration: np.ndarray  # (n_cal,) float64, sorted ascending
    mean: np.ndarray | None = None  # mahalanobis: centre
    whiten: np.ndarray | None = None  # mahalanobis: (d, d) whitening matrix
    info: dict[str, Any] = field(default_factory=dict)
    train_rows: np.ndarray | None = None  # (n_train,) rows of the run's vectors

    @property
    def threshold(self) -> float:
        """The calibration distance at ``params["percentile"]`` (for display)."""
        return float(np.percentile(self.calibration, self.params["percentile"]))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Vectors (n, d) into the index's space (unit length for cosine, whitened for
        Mahalanobis)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None]
        if X.shape[1] != self.dims:
            raise ValueError(f"The vectors must have {self.dims} values (the OOD index's "
                             f"representation). Got {X.shape[1]} instead.")
        return _transform(_log(X, self.params), self.params["metric"], self.mean, self.whiten)

    @property
    def dims(self) -> int:
        return int(self.params.get("dims", self.train_vectors.shape[1]))

    def knn(self, Z: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, k), distances (n, k)) of the k nearest training vectors of transformed
        vectors ``Z``; ``exclude[i]`` (a training row, or -1) is left out of row i's search."""
        return _knn(self.train_vectors, Z, self.params["k"], self.params["metric"], exclude)

    def percentile_of(self, distance: np.ndarray) -> np.ndarray:
        """The percentile (0-100) of each distance in the calibration distribution: the share
        of held-out tiles with a smaller k-NN distance (ties count half)."""
        d = np.asarray(distance, dtype=np.float64)
        lo = np.searchsorted(self.calibration, d, side="left")
        hi = np.searchsorted(self.calibration, d, side="right")
        return 100.0 * (lo + hi) / (2.0 * len(self.calibration))

    def score(self, X: np.ndarray) -> OODScores:
        """Score vectors (n, d) of the run's representation."""
        rows, dist = self.knn(self.transform(X))
        mean = dist.mean(axis=1)
        return OODScores(mean, self.percentile_of(mean), rows, dist)

    def is_ood(self, score: float) -> bool:
        """Whether a score is above the warning percentile."""
        return bool(score > self.params["percentile"])

    def to_arrays(self, with_vectors: bool = True) -> dict[str, np.ndarray]:
        """The plain arrays ``app.artifacts.write_ood`` stores (parameters go to the manifest).
        Without ``with_vectors`` only the training rows are kept: the vectors are the run's
        own (``vectors.npy``), so they are not stored twice."""
        out = {"train_ids": np.asarray(self.train_ids, dtype=str),
               "calibration": self.calibration.astype(np.float64)}
        if self.train_rows is not None:
            out["train_rows"] = np.asarray(self.train_rows, dtype=np.int64)
        if with_vectors or self.train_rows is None:
            out["train_vectors"] = self.train_vectors.astype(np.float32)
        if self.mean is not None and self.whiten is not None:
            out.update(mean=self.mean.astype(np.float32), whiten=self.whiten.astype(np.float32))
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict[str, Any],
                    info: dict[str, Any] | None = None,
                    vectors: np.ndarray | None = None) -> OODIndex:
        """The index stored by :meth:`to_arrays` with its manifest parameters (``vectors``: the
        run's vectors, for an index stored without its own); ValueError when the arrays do not
        fit together."""
        try:
            if "train_vectors" in arrays:
                train = np.asarray(arrays["train_vectors"], dtype=np.float32)
            else:
                rows = np.asarray(arrays["train_rows"], dtype=np.int64)
                if vectors is None or rows.size == 0 or rows.min() < 0 \
                        or rows.max() >= len(vectors):
                    raise ValueError("the OOD index's training rows are not rows of the run's "
                                     "vectors")
                train = _transform(_log(np.asarray(vectors[rows], dtype=np.float32), params),
                                   params.get("metric"), arrays.get("mean"), arrays.get("whiten"))
            index = cls(params=dict(params), train_ids=np.asarray(arrays["train_ids"], dtype=str),
                        train_vectors=np.ascontiguousarray(train),
                        train_rows=arrays.get("train_rows"),
                        calibration=np.sort(np.asarray(arrays["calibration"], dtype=np.float64)),
                        mean=arrays.get("mean"), whiten=arrays.get("whiten"), info=info or {})
        except KeyError as exc:
            raise ValueError(f"the OOD index lacks the array {exc}") from None
        n, d = index.train_vectors.shape
        if (len(index.train_ids) != n or index.calibration.size == 0 or d != index.dims
                or (params.get("metric") == "mahalanobis"
                    and (index.mean is None or index.whiten is None))):
            raise ValueError("the OOD index's arrays do not fit together (ids, vectors, "
                             "calibration, whitening)")
        return index


# --------------------------------------------------------------------------- fitting


def _log(X: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """``log1p(max(x, 0) / offset)`` per value for the "log" transform (``offset`` =
    ``log_scale`` × the mean training value, fitted): which channels fire at all weighs as much
    as how strongly, so a scene that wakes channels the training tiles never used stands out
    even when its strong channels look familiar. Identity for "none"."""
    if params.get("transform", "none") != "log":
        return X
    return np.log1p(np.maximum(X, 0.0) / float(params["log_offset"])).astype(np.float32)


def _transform(X: np.ndarray, metric: str, mean: np.ndarray | None,
               whiten: np.ndarray | None) -> np.ndarray:
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return (X / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    if metric == "mahalanobis":
        return ((X - mean) @ whiten).astype(np.float32)
    return X


def _knn(data: np.ndarray, Z: np.ndarray, k: int, metric: str,
         exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k-NN in chunks (bounded memory): cosine distance 1 - dot on unit vectors,
    else Euclidean."""
    n = data.shape[0]
    k_eff = min(k, n - (exclude is not None))
    if k_eff < 1:
        raise ValueError(f"The OOD index holds {n} training vectors; k-NN needs at least "
                         f"{1 + (exclude is not None)}.")
    sq = np.einsum("ij,ij->i", data, data) if metric != "cosine" else None
    rows_out = np.empty((Z.shape[0], k_eff), np.int64)
    dist_out = np.empty((Z.shape[0], k_eff), np.float64)
    chunk = max(16, min(_CHUNK, _CHUNK_CELLS // max(n, 1)))  # ≤ ~64 MB of distances at once
    for start in range(0, Z.shape[0], chunk):
        q = Z[start:start + chunk]
        dots = q @ data.T
        if metric == "cosine":
            d = np.clip(1.0 - dots, 0.0, 2.0)
        else:
            qsq = np.einsum("ij,ij->i", q, q)
            d = np.sqrt(np.maximum(qsq[:, None] - 2 * dots + sq[None, :], 0.0))
        d = d.astype(np.float64)
        if exclude is not None:
            ex = exclude[start:start + chunk]
            hit = ex >= 0
            d[np.nonzero(hit)[0], ex[hit]] = np.inf
        part = np.argpartition(d, k_eff - 1, axis=1)[:, :k_eff]
        pd_ = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd_, axis=1, kind="stable")
        rows_out[start:start + len(q)] = np.take_along_axis(part, order, axis=1)
        dist_out[start:start + len(q)] = np.take_along_axis(pd_, order, axis=1)
    return rows_out, dist_out


def fit_ood_index(
    vectors: np.ndarray, tile_ids: Sequence[str], splits: Sequence[str],
    params: dict[str, Any] | None = None, **overrides: Any,
) -> tuple[OODIndex, OODScores]:
    """Fit the guard on vectors (n, d) with their tile ids and splits; return the index and the
    scores of every tile (training tiles leave themselves out; tiles of neither split group get
    plain scores)."""
    p = validate_params(params, **overrides)
    X = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(tile_ids, dtype=str)
    split = np.asarray(splits, dtype=object)
    if X.ndim != 2 or X.shape[0] != len(ids) or len(split) != len(ids):
        raise ValueError(f"vectors {X.shape}, {len(ids)} tile ids and {len(split)} splits must "
                         "describe the same tiles.")
    if not np.isfinite(X).all():
        raise ValueError("The vectors hold NaN or infinite values; re-run `python -m app embed`.")
    train_rows = np.nonzero(np.isin(split, p["train_splits"]))[0]
    cal_rows = np.nonzero(np.isin(split, p["calibration_splits"]))[0]
    if len(train_rows) < p["k"] + 1:
        raise ValueError(
            f"The OOD guard needs more than k = {p['k']} tiles of splits {p['train_splits']} to "
            f"index; this run has {len(train_rows)}. Embed the training tiles too "
            "(`python -m app embed` without --splits).")
    if len(cal_rows) < 10:
        raise ValueError(
            f"The OOD guard needs at least 10 held-out tiles (splits {p['calibration_splits']}) "
            f"to calibrate against; this run has {len(cal_rows)}. Embed the val and test tiles "
            "too (`python -m app embed` without --splits).")
    sampled = len(train_rows) > p["max_train"]
    if sampled:
        rng = np.random.default_rng(p["random_state"])
        train_rows = np.sort(rng.choice(train_rows, p["max_train"], replace=False))
    if p["transform"] == "log":
        base = float(np.mean(np.maximum(X[train_rows], 0.0)))
        p["log_offset"] = p["log_scale"] * (base if base > 0 else 1.0)
    X = _log(X, p)
    mean = whiten = None
    if p["metric"] == "mahalanobis":
        from sklearn.covariance import LedoitWolf  # lazy: scikit-learn costs ~1 s to import

        lw = LedoitWolf().fit(X[train_rows].astype(np.float64))
        evals, evecs = np.linalg.eigh(lw.covariance_)
        evals = np.maximum(evals, evals.max() * 1e-9 + 1e-12)
        mean = lw.location_.astype(np.float32)
        whiten = (evecs / np.sqrt(evals)).astype(np.float32)
        p_info = {"shrinkage": float(lw.shrinkage_)}
    else:
        p_info = {}
    Z = _transform(X, p["metric"], mean, whiten)
    index = OODIndex(
        params={**p, "dims": int(X.shape[1])}, train_ids=ids[train_rows],
        train_vectors=np.ascontiguousarray(Z[train_rows]), calibration=np.zeros(1),
        mean=mean, whiten=whiten, train_rows=train_rows,
    )
    exclude = np.full(len(ids), -1, np.int64)
    exclude[train_rows] = np.arange(len(train_rows))
    rows, dist = index.knn(Z, exclude=exclude)
    mean_d = dist.mean(axis=1)
    index.calibration = np.sort(mean_d[cal_rows])
    index.info = {
        "n_train": int(len(train_rows)), "n_calibration": int(len(cal_rows)),
        "train_sampled": bool(sampled), "threshold_distance": index.threshold,
        "calibration_quantiles": {
            str(q): float(np.percentile(index.calibration, q)) for q in (50, 90, 95, 99)},
        **p_info,
    }
    return index, OODScores(mean_d, index.percentile_of(mean_d), rows, dist)


def fit_ood(run: EmbeddingsRun, params: dict[str, Any] | None = None, *,
            vectors: np.ndarray | None = None, **overrides: Any) -> tuple[OODIndex, OODScores]:
    """Fit the guard of a stored run on its vectors (or ``vectors``, e.g. another pooling from
    :func:`vectors_from_stored_tiles`). Raises ValueError when the run has no split column."""
    tiles = run.tiles
    if "split" not in tiles:
        raise ValueError(f"embeddings run {run.run_id!r} has no 'split' column: the OOD guard "
                         "needs to know which tiles the model was trained on.")
    X = run.vectors_float32() if vectors is None else vectors
    index, scores = fit_ood_index(X, tiles["tile_id"].astype(str).to_numpy(),
                                  tiles["split"].astype(str).to_numpy(), params, **overrides)
    index.params["representation"] = (index.params["representation"]
                                      or run.manifest.get("representation", "gap"))
    index.params["layer"] = run.layer
    return index, scores


def load_ood(run: EmbeddingsRun) -> OODIndex:
    """The run's stored guard (hash-checked, no pickle), loaded once per run object; raises
    ``ArtifactError`` with a message saying how to build it when the run has none."""
    from app.artifacts import ArtifactError

    def load() -> OODIndex:
        arrays = run.ood_arrays()
        info = run.manifest["ood"]
        try:
            own = "train_vectors" not in arrays
            return OODIndex.from_arrays(arrays, info["params"], info.get("info"),
                                        vectors=run.vectors_float32() if own else None)
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"embeddings run {run.run_id!r}: the stored OOD guard is "
                                f"unusable ({exc}); rebuild it with `python -m app ood "
                                f"{run.run_id}`.") from exc

    return run.memo("ood_index", load)


def scores_table(tile_ids: Sequence[str], index: OODIndex, scores: OODScores) -> Any:
    """The per-tile table ``ood/scores.parquet`` holds: tile_id, ood_score, ood_distance,
    ood_nearest (id of the nearest training tile other than itself)."""
    import pandas as pd  # lazy: the pages' imports stay light

    return pd.DataFrame({
        "tile_id": np.asarray(tile_ids, dtype=object),
        "ood_score": scores.score.astype(np.float32),
        "ood_distance": scores.distance.astype(np.float32),
        "ood_nearest": index.train_ids[scores.nearest[:, 0]].astype(object),
    })


# --------------------------------------------------------------------------- images


def image_tiles(image: np.ndarray, tile: int) -> list[np.ndarray]:
    """Tiles of ``tile`` pixels covering the image (the last ones flush with the edges, as the
    stored tiles of a scene); a side shorter than ``tile`` is kept whole (padded to /16)."""
    from app.ml.inference import pad_to_multiple, tile_origins  # lazy: TF-free but large

    image = pad_to_multiple(np.asarray(image))
    h, w = image.shape[:2]
    th, tw = min(tile, h), min(tile, w)
    return [image[y:y + th, x:x + tw]
            for y in tile_origins(h, th, max(16, tile)) for x in tile_origins(w, tw, max(16, tile))]


def tile_vectors(model: keras.Model, tiles: list[np.ndarray], layer: str, representation: str,
                 fmodel: Any = None, batch_size: int = 8) -> np.ndarray:
    """Vectors (n, dims) of same-size RGB tiles (0..255) in ``representation`` of ``layer``."""
    from app.ml.extract import embed_images, feature_model  # lazy: TensorFlow

    fm = fmodel or feature_model(model, layer)
    out = []
    for start in range(0, len(tiles), batch_size):
        batch = np.stack(tiles[start:start + batch_size]).astype(np.float32)
        vec, _ = embed_images(model, batch, layer=layer, representation=representation, fmodel=fm)
        out.append(vec)
    return np.concatenate(out).astype(np.float32)


def run_tile_size(run: EmbeddingsRun) -> int:
    """The side of the run's stored tiles (256 when the table does not say)."""
    tiles = run.tiles
    if "size" in tiles and len(tiles):
        return int(tiles["size"].min())
    return 256


def score_image(index: OODIndex, run: EmbeddingsRun, model: keras.Model,
                image: np.ndarray) -> dict[str, Any]:
    """The guard's verdict on one RGB image (H, W, 3), JSON-friendly: ``score`` (percentile),
    ``distance`` (mean of its tiles'), ``ood`` (above the percentile), ``tiles`` (how many
    were scored), ``nearest`` ([(tile id, distance)] of the training tiles nearest its most
    typical tile) and the ``percentile`` it is compared with."""
    rep = index.params["representation"]
    tiles = image_tiles(np.asarray(image, dtype=np.uint8), run_tile_size(run))
    shapes = {t.shape for t in tiles}
    # The key ``app.ml.apply.embed_for_run`` uses: one feature model (and traced graph) per run.
    fm = run.memo(("feature_model", id(model), index.params["layer"]),
                  lambda: (model, _feature_model(model, index.params["layer"])))[1]
    vecs = np.concatenate([
        tile_vectors(model, [t for t in tiles if t.shape == s], index.params["layer"], rep, fm)
        for s in sorted(shapes)])
    scores = index.score(vecs)
    mean = float(np.mean(scores.distance))
    typical = int(np.argmin(np.abs(scores.distance - mean)))
    pct = float(index.percentile_of(np.array([mean]))[0])
    nearest = [(str(index.train_ids[r]), float(d))
               for r, d in zip(scores.nearest[typical], scores.nearest_distance[typical],
                               strict=True)]
    return {"score": round(pct, 2), "distance": mean, "ood": index.is_ood(pct),
            "percentile": index.params["percentile"], "tiles": len(tiles),
            "metric": index.params["metric"], "nearest": nearest}


def _feature_model(model: keras.Model, layer: str) -> Any:
    from app.ml.extract import feature_model  # lazy: TensorFlow

    return feature_model(model, layer)


def vectors_from_stored_tiles(run: EmbeddingsRun, model: keras.Model, representation: str,
                              progress: Callable[[int, int], None] | None = None,
                              batch_size: int = 8) -> np.ndarray:
    """Vectors of every stored tile in ``representation`` of the run's layer, recomputed from
    the run's full-resolution tile images (``images/<tile_id>.jpg``), for a guard whose pooling
    differs from the run's."""
    from PIL import Image

    from app.ml.extract import feature_model  # lazy: TensorFlow

    fm = feature_model(model, run.layer)
    ids = run.tiles["tile_id"].astype(str).tolist()
    out: list[np.ndarray] = []
    for start in range(0, len(ids), batch_size):
        batch = []
        for tid in ids[start:start + batch_size]:
            path = run.file_for("image", tid)
            if path is None:
                raise ValueError(f"embeddings run {run.run_id!r} stores no full-resolution "
                                 f"image of tile {tid}; re-run `python -m app embed`.")
            with Image.open(path) as im:
                batch.append(np.asarray(im.convert("RGB")))
        out.append(tile_vectors(model, batch, run.layer, representation, fm, batch_size))
        if progress:
            progress(min(start + batch_size, len(ids)), len(ids))
    return np.concatenate(out)


# --------------------------------------------------------------------------- provenance


def trained_on(model_manifest: dict[str, Any] | None) -> str:
    """What a model was trained on, in words, from its model manifest: "demo model · trained
    on 448 tiles of 14 synthetic locations (6 more held out)"; an imported model whose
    training data is not recorded says so."""
    if not model_manifest:
        return "unknown model · its training data is not recorded"
    run = str(model_manifest.get("run_id", "model"))
    imported = model_manifest.get("imported") or {}
    name = ("demo model" if run.startswith("demo") else
            f"imported model {run}" if imported else f"model {run}")
    ds = model_manifest.get("dataset") or {}
    if not ds:
        source = imported.get("source_name")
        return f"{name}{f' ({source})' if source else ''} · its training data is not recorded"
    counts = ds.get("counts") or {}
    source = str(ds.get("source") or ds.get("name") or "unknown")
    groups = (model_manifest.get("split") or {}).get("groups") or {}
    train_groups = len(groups.get("train") or [])
    held = sum(len(groups.get(s) or []) for s in groups if s != "train")
    train_tiles = counts.get("train")
    if train_groups:
        what = f"{_int(train_tiles)} tiles of " if train_tiles else ""
        text = f"{name} · trained on {what}{train_groups} {source} locations"
        return text + (f" ({held} more held out)" if held else "")
    if train_tiles:
        return f"{name} · trained on {_int(train_tiles)} {source} tiles"
    return f"{name} · trained on {source} data ({ds.get('name') or ds.get('path') or 'unnamed'})"


def _int(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{int(v):,}" if math.isfinite(v) else str(value)
