"""Map embedding vectors to 2-D/3-D (PCA, t-SNE, UMAP) and shrink huge vectors on the fly.

Plain numpy/scikit-learn code: no Dash, Flask or TensorFlow. openTSNE and umap-learn are imported
lazily because importing them costs seconds (umap also JIT-compiles with numba on first use).

Decisions (see the docstrings for the why):

- No standardisation by default: bottleneck activations are ReLU outputs whose channels share one
  scale, and Euclidean distances between raw activations are what the thesis mapped. Scaling every
  channel to unit variance would blow up near-dead channels (tiny variance, mostly noise) to the
  same weight as the informative ones. ``standardize=True`` is available (mean/std stored; channels
  with zero variance are left unscaled).
- UMAP is seeded by default (``random_state=0``), which makes umap-learn run single-threaded; a
  reproducible map (same dots in the same places on every rebuild) is worth more to the dashboard
  than the speed-up on 2 shared cores. ``random_state=None`` opts into parallel, unseeded runs.
- t-SNE runs with ``n_jobs=1`` by default for the same reason (override with ``n_jobs=``).
- Only the fitted t-SNE/UMAP objects are pickled; every file is hashed before it is parsed.
- Which methods exist, their fewest rows, how they place new points and whether they are pickled
  is said once, in ``app.ml.registry``: ``fit_reducer`` dispatches through it, and a method
  without a ``transform`` of its own places points with ``model.transform`` and is stored as a
  pickle (the generic default).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import pickle
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA, IncrementalPCA

from app import artifacts
from app.ml import registry

__all__ = [
    "FittedReducer",
    "ReducerLoadError",
    "StreamingProjector",
    "fit_pca",
    "fit_reducer",
    "fit_tsne",
    "fit_umap",
    "load_reducer",
    "pca_transform",
    "reducer_files",
    "reducer_payloads",
    "save_reducer",
    "tsne_transform",
]

#: Bumped when the on-disk layout changes; older files are refused with a "re-run" message.
FORMAT_VERSION = 1

#: Libraries every reducer's versions record (the registry adds each method's own).
_BASE_LIBRARIES = ("numpy", "scipy", "scikit-learn")

# Parameters a caller may pass through ``**params`` and their defaults.
_TSNE_DEFAULTS: dict[str, Any] = {
    "perplexity": 30.0,
    "learning_rate": "auto",
    "early_exaggeration_iter": 250,
    "early_exaggeration": "auto",
    "n_iter": 500,
    "exaggeration": None,
    "dof": 1.0,
    "theta": 0.5,
    "metric": "euclidean",
    "initialization": "pca",
    "neighbors": "auto",
    "negative_gradient_method": "auto",
    "n_jobs": 1,
    # openTSNE's ``TSNEEmbedding.transform`` defaults, recorded so a new point is placed the same
    # way after a reload.
    "transform_perplexity": 5.0,
    "transform_n_iter": 250,
    "transform_learning_rate": 0.1,
    "transform_exaggeration": 1.5,
    "transform_max_grad_norm": 0.25,
    "transform_initialization": "median",
    "transform_k": 25,
}
_UMAP_DEFAULTS: dict[str, Any] = {
    "n_neighbors": 15,
    "min_dist": 0.1,
    "spread": 1.0,
    "metric": "euclidean",
    "n_epochs": None,
    "init": "spectral",
    "low_memory": True,
    "n_jobs": None,  # resolved: 1 when seeded, -1 (all cores) when random_state is None
}

#: The parameters above that go to ``openTSNE.TSNE`` / ``umap.UMAP`` as they are (after checks).
_TSNE_ARGS = (
    "perplexity", "learning_rate", "early_exaggeration_iter", "early_exaggeration", "n_iter",
    "exaggeration", "dof", "theta", "initialization", "metric", "neighbors",
    "negative_gradient_method", "n_jobs",
)
_UMAP_ARGS = (
    "n_neighbors", "min_dist", "spread", "metric", "n_epochs", "init", "low_memory", "n_jobs",
    "transform_seed",
)

_TSNE_LOCK = threading.Lock()


class ReducerLoadError(RuntimeError):
    """A stored reducer cannot be trusted or read; the message says which file and what to do."""


# --------------------------------------------------------------------------------------------
# validation helpers


def _param_error(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"The {name!r} parameter must be {expected}. Got {got!r} instead.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if not _is_int(value) or value < low or (high is not None and value > high):
        expected = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise _param_error(name, expected, value)
    return int(value)


def _check_positive(name: str, value: Any) -> float:
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _param_error(name, "a positive finite number", value)
    return float(value)


def _check_n_jobs(value: Any) -> int:
    if not _is_int(value) or value == 0:
        raise _param_error("n_jobs", "a non-zero int (-1: all cores)", value)
    return int(value)


def _check_random_state(value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 0 or value > 2**32 - 1:
        expected = "an int in [0, 4294967295]" + (" or None" if allow_none else "")
        raise _param_error("random_state", expected, value)
    return int(value)


def _check_method(method: Any) -> registry.ReducerSpec:
    """The registered spec of ``method`` (a ValueError listing the registered ones if none)."""
    return registry.reducer(method)


def _check_X(X: Any, name: str = "X", min_samples: int = 1) -> np.ndarray:
    """Return ``X`` as a finite 2-D float array (float32 kept, anything else becomes float64)."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "fiub":
        raise _param_error(name, "a 2-D array of finite floats", f"an array of dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise _param_error(name, "a 2-D array of finite floats", f"an array of shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise _param_error(
            name, f"an array with at least {min_samples} rows", f"{arr.shape[0]} rows"
        )
    if arr.shape[1] < 1:
        raise _param_error(name, "an array with at least 1 column", "0 columns")
    if not np.isfinite(arr).all():
        raise _param_error(name, "a 2-D array of finite floats", "an array with NaN or inf")
    return arr


def _unknown_params(method: str, params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) for method {method!r}: {unknown}. Valid: {sorted(allowed)}."
        )


def _jsonable(value: Any) -> Any:
    """Plain Python types only, so params/diagnostics can go into a JSON manifest."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _library_versions() -> dict[str, str]:
    """Installed versions of the libraries a reducer depends on (absent ones are skipped)."""
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    names = dict.fromkeys(_BASE_LIBRARIES)
    for spec in registry.REDUCERS.values():
        names.update(dict.fromkeys(spec.libraries))
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


# --------------------------------------------------------------------------------------------
# lazy imports


def _import_umap() -> Any:
    """Import umap-learn without dragging in TensorFlow.

    ``umap/__init__.py`` tries to import ``ParametricUMAP``, which imports TensorFlow (seconds and
    hundreds of MB). We never use it, so the import is made to fail fast unless TensorFlow is
    already loaded by the caller.
    """
    if "umap" in sys.modules:
        return sys.modules["umap"]
    # Already paid for by the caller (e.g. the pipeline after running the U-Net): import as is.
    blocked = [] if "tensorflow" in sys.modules else ["tensorflow", "keras"]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportWarning)
            import umap
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return umap


# --------------------------------------------------------------------------------------------
# the fitted reducer


@dataclass
class FittedReducer:
    """A fitted map: the coordinates of the fitted vectors plus the means to place new ones.

    ``params`` holds every parameter used (JSON-serialisable), ``versions`` the library versions
    (default: those installed now), ``diagnostics`` results worth showing (PCA explained
    variance, t-SNE KL divergence).
    ``model`` is the fitted object: a dict of plain arrays for PCA, an ``openTSNE.TSNEEmbedding``
    for t-SNE, a ``umap.UMAP`` for UMAP (any object with ``transform`` for a method registered
    without a transform of its own). ``scaler`` is ``(mean, std)`` when standardised.
    """

    method: str
    n_components: int
    params: dict[str, Any]  # at least "n_features" (the fitted vectors' length)
    points: np.ndarray
    versions: dict[str, str] = field(default_factory=lambda: _library_versions())
    diagnostics: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)
    scaler: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return int(self.params["n_features"])

    def _scale(self, X: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            return X
        mean, std = self.scaler
        return ((X - mean) / std).astype(X.dtype, copy=False)

    def transform(self, X_new: Any) -> np.ndarray:
        """Place new vectors in the same map as ``points``; returns float32 (m, n_components)."""
        X = _check_X(X_new, "X_new", min_samples=1)
        if X.shape[1] != self.n_features:
            raise _param_error(
                "X_new",
                f"an array with {self.n_features} columns (as fitted)",
                f"{X.shape[1]} columns",
            )
        X = self._scale(X)
        custom = _check_method(self.method).transform_function()
        Y = custom(self, X) if custom is not None else self.model.transform(X)
        return np.ascontiguousarray(Y, dtype=np.float32)


def pca_transform(reducer: FittedReducer, X: np.ndarray) -> np.ndarray:
    """PCA's placement: centre with the fitted mean, project on the components."""
    return (X - reducer.model["mean"]) @ reducer.model["components"].T


def tsne_transform(reducer: FittedReducer, X: np.ndarray) -> np.ndarray:
    """openTSNE's placement of new points into the fitted embedding, with the stored params."""
    # openTSNE re-centres the reference embedding in place during transform; we centred it at
    # fit time so that is a no-op, and restore it anyway so repeated calls cannot drift. The lock
    # keeps concurrent callers (dashboard threads) from seeing the map mid-update.
    embedding, params = reducer.model, reducer.params
    n_train = embedding.shape[0]
    perplexity = min(float(params["transform_perplexity"]), (n_train - 1) / 3)
    with _TSNE_LOCK:
        reference = np.array(embedding, copy=True)
        try:
            Y = embedding.transform(
                X,
                perplexity=perplexity,
                initialization=params["transform_initialization"],
                k=int(params["transform_k"]),
                learning_rate=params["transform_learning_rate"],
                exaggeration=params["transform_exaggeration"],
                n_iter=int(params["transform_n_iter"]),
                max_grad_norm=params["transform_max_grad_norm"],
            )
        finally:
            embedding[...] = reference
    return np.asarray(Y)


# --------------------------------------------------------------------------------------------
# fitting


def fit_reducer(
    method: str,
    X: Any,
    *,
    n_components: int = 2,
    random_state: int | None = 0,
    **params: Any,
) -> FittedReducer:
    """Fit the registered map ``method`` ("pca", "tsne", "umap", ...) on the rows of ``X``.

    Extra keyword parameters go to the method (see ``_TSNE_DEFAULTS``/``_UMAP_DEFAULTS``);
    ``standardize=True`` scales every column to zero mean and unit variance first (off by default:
    raw activations share a scale and scaling would amplify near-dead channels).
    """
    fit = _check_method(method).fit_function()
    return fit(X, n_components=n_components, random_state=random_state, **params)


def fit_pca(X: Any, *, n_components: int = 2, random_state: int | None = 0,
            **params: Any) -> FittedReducer:
    """PCA of the rows of ``X`` (plain arrays kept: nothing to unpickle)."""
    return _fit("pca", X, n_components, random_state, params, _fit_pca)


def fit_tsne(X: Any, *, n_components: int = 2, random_state: int | None = 0,
             **params: Any) -> FittedReducer:
    """openTSNE map of the rows of ``X`` (parameters: ``_TSNE_DEFAULTS``)."""
    return _fit("tsne", X, n_components, random_state, params, _fit_tsne)


def fit_umap(X: Any, *, n_components: int = 2, random_state: int | None = 0,
             **params: Any) -> FittedReducer:
    """umap-learn map of the rows of ``X`` (parameters: ``_UMAP_DEFAULTS``)."""
    return _fit("umap", X, n_components, random_state, params, _fit_umap)


_Core = Callable[..., FittedReducer]  # (X, n_components, random_state, params, common)


def _fit(method: str, X: Any, n_components: Any, random_state: Any, params: dict,
         core: _Core) -> FittedReducer:
    """What every built-in fit shares: checks, optional standardising, the recorded params."""
    X = _check_X(X, "X", min_samples=_check_method(method).min_samples)
    random_state = _check_random_state(random_state)
    standardize = params.pop("standardize", False)
    if not isinstance(standardize, (bool, np.bool_)):
        raise _param_error("standardize", "a bool", standardize)
    standardize = bool(standardize)

    scaler = None
    if standardize:
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std <= np.finfo(X.dtype).eps * np.maximum(1.0, np.abs(mean))] = 1.0
        scaler = (mean, std)
        X = ((X - mean) / std).astype(X.dtype, copy=False)

    common = {
        "method": method,
        "n_components": None,  # filled below
        "random_state": random_state,
        "standardize": standardize,
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "dtype": str(X.dtype),
    }
    reducer = core(X, n_components, random_state, params, common)
    reducer.scaler = scaler
    reducer.params = _jsonable(reducer.params)
    reducer.diagnostics = _jsonable(reducer.diagnostics)
    return reducer


def _fit_pca(
    X: np.ndarray, n_components: Any, random_state: int | None, params: dict, common: dict
) -> FittedReducer:
    _unknown_params("pca", params, set())
    n, d = X.shape
    n_components = _check_int("n_components", n_components, 1, min(n, d))
    pca = PCA(n_components=n_components, svd_solver="auto", random_state=random_state).fit(X)
    # Plain arrays only: nothing of sklearn's object is kept, so nothing needs pickling.
    model = {
        "components": np.asarray(pca.components_),
        "mean": np.asarray(pca.mean_),
        "explained_variance_ratio": np.asarray(pca.explained_variance_ratio_),
        "explained_variance": np.asarray(pca.explained_variance_),
    }
    run_params = {
        **common,
        "n_components": n_components,
        "svd_solver": "auto",
        "svd_solver_used": getattr(pca, "_fit_svd_solver", "auto"),
    }
    reducer = FittedReducer(
        method="pca",
        n_components=n_components,
        params=run_params,
        points=np.empty((0, n_components), np.float32),
        versions=_library_versions(),
        diagnostics={"explained_variance_ratio": model["explained_variance_ratio"]},
        model=model,
    )
    # Coordinates come from the same code path as transform, so transform(X) == points.
    reducer.points = np.ascontiguousarray((X - model["mean"]) @ model["components"].T, np.float32)
    return reducer


def _fit_tsne(
    X: np.ndarray, n_components: Any, random_state: int | None, params: dict, common: dict
) -> FittedReducer:
    import openTSNE  # lazy: seconds to import; only t-SNE fits need it

    _unknown_params("tsne", params, set(_TSNE_DEFAULTS))
    n = X.shape[0]
    # Barnes-Hut cost grows as 2**n_components; a map beyond 3-D is not a picture anymore.
    n_components = _check_int("n_components", n_components, 1, 3)
    p = {**_TSNE_DEFAULTS, **params}
    requested = _check_positive("perplexity", p["perplexity"])
    # openTSNE needs 3 * perplexity nearest neighbours, i.e. perplexity < n / 3.
    p["perplexity"] = min(requested, (n - 1) / 3)
    p["perplexity_requested"] = requested
    _check_positive("transform_perplexity", p["transform_perplexity"])
    p["n_iter"] = _check_int("n_iter", p["n_iter"], 0)
    p["early_exaggeration_iter"] = _check_int(
        "early_exaggeration_iter", p["early_exaggeration_iter"], 0
    )
    p["n_jobs"] = _check_n_jobs(p["n_jobs"])
    if p["early_exaggeration"] == "auto":  # openTSNE's rule, resolved so it is recorded
        p["early_exaggeration"] = 12.0 if p["exaggeration"] is None else max(12.0, p["exaggeration"])
    if p["neighbors"] == "auto":  # openTSNE's own rule, resolved here so it is recorded
        p["neighbors"] = "exact" if n < 1000 else "annoy"
    if p["negative_gradient_method"] == "auto":
        # openTSNE picks FFT from 10 000 points, but its FFT only handles 1-D and 2-D maps.
        p["negative_gradient_method"] = "fft" if n >= 10_000 and n_components <= 2 else "bh"
    tsne = openTSNE.TSNE(n_components=n_components, random_state=random_state, verbose=False,
                         **{name: p[name] for name in _TSNE_ARGS})
    embedding = tsne.fit(X)
    # Centre the map the way openTSNE's transform does, so new points land in this frame.
    embedding -= (np.max(embedding, axis=0) + np.min(embedding, axis=0)) / 2
    return FittedReducer(
        method="tsne",
        n_components=n_components,
        params={**common, **p, "n_components": n_components},
        points=np.ascontiguousarray(embedding, dtype=np.float32),
        versions=_library_versions(),
        diagnostics={"kl_divergence": float(getattr(embedding, "kl_divergence", float("nan")))},
        model=embedding,
    )


def _fit_umap(
    X: np.ndarray, n_components: Any, random_state: int | None, params: dict, common: dict
) -> FittedReducer:
    umap = _import_umap()

    _unknown_params("umap", params, set(_UMAP_DEFAULTS))
    n = X.shape[0]
    # Spectral initialisation needs n_components < n - 1.
    n_components = _check_int("n_components", n_components, 1, min(50, n - 2))
    p = {**_UMAP_DEFAULTS, **params}
    requested = _check_int("n_neighbors", p["n_neighbors"], 2)
    p["n_neighbors"] = min(requested, n - 1)
    p["n_neighbors_requested"] = requested
    _check_positive("spread", p["spread"])
    if p["n_epochs"] is not None:
        p["n_epochs"] = _check_int("n_epochs", p["n_epochs"], 1)
    # umap-learn's default, recorded: 500 epochs up to 10 000 points, 200 above.
    p["n_epochs_effective"] = p["n_epochs"] or (500 if n <= 10_000 else 200)
    if random_state is not None:
        # Seeded UMAP is single-threaded in umap-learn; refuse rather than silently ignore.
        if p["n_jobs"] not in (None, 1):
            raise _param_error(
                "n_jobs", "1 or None when random_state is set (seeded UMAP is single-threaded)",
                p["n_jobs"],
            )
        p["n_jobs"] = 1
        p["transform_seed"] = random_state
    else:
        p["n_jobs"] = -1 if p["n_jobs"] is None else _check_n_jobs(p["n_jobs"])
        p["transform_seed"] = 42  # umap-learn's default
    model = umap.UMAP(n_components=n_components, random_state=random_state, verbose=False,
                      **{name: p[name] for name in _UMAP_ARGS})
    model.fit(X)
    return FittedReducer(
        method="umap",
        n_components=n_components,
        params={**common, **p, "n_components": n_components},
        points=np.ascontiguousarray(model.embedding_, dtype=np.float32),
        versions=_library_versions(),
        model=model,
    )


# --------------------------------------------------------------------------------------------
# persistence


def reducer_files(method: str) -> tuple[str, ...]:
    """File names a saved reducer of ``method`` consists of (relative to its directory)."""
    spec = _check_method(method)
    return (f"{method}.npz", f"{method}.pkl") if spec.pickled else (f"{method}.npz",)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def reducer_payloads(reducer: FittedReducer) -> dict[str, bytes]:
    """``{file name: bytes}`` of a fitted reducer, as ``save_reducer`` writes them.

    Points, params and versions go to ``<method>.npz``; a method stored as plain arrays (PCA)
    keeps its model there too, any other needs its fitted object, which only pickle can store
    (``<method>.pkl``).
    """
    method = reducer.method
    spec = _check_method(method)
    meta = {
        "format": FORMAT_VERSION,
        "method": method,
        "n_components": int(reducer.n_components),
        "params": _jsonable(reducer.params),
        "versions": dict(reducer.versions),
        "diagnostics": _jsonable(reducer.diagnostics),
    }
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps(meta, sort_keys=True)),
        "points": np.asarray(reducer.points, dtype=np.float32),
    }
    if reducer.scaler is not None:
        arrays["scaler_mean"], arrays["scaler_std"] = reducer.scaler
    npz_name, *pkl_name = reducer_files(method)
    if not spec.pickled:
        for key, value in reducer.model.items():
            arrays[f"{method}_{key}"] = np.asarray(value)
    payloads = {npz_name: _npz_bytes(arrays)}
    if pkl_name:
        payloads[pkl_name[0]] = pickle.dumps(reducer.model, protocol=pickle.HIGHEST_PROTOCOL)
    return payloads


def save_reducer(reducer: FittedReducer, directory: Path) -> dict[str, str]:
    """Write ``reducer`` to ``directory`` (each file atomically); returns ``{file name: sha256
    hex}`` for the manifest."""
    return artifacts.write_files(directory, reducer_payloads(reducer))


#: Imports to make before unpickling a model that depends on a library (keeps TensorFlow out).
_BEFORE_UNPICKLE: dict[str, Callable[[], Any]] = {"umap-learn": _import_umap}


def _stored_rows(model: Any) -> int | None:
    """How many fitted points an unpickled model holds (None when it does not say)."""
    if hasattr(model, "embedding_"):
        return int(np.asarray(model.embedding_).shape[0])
    if isinstance(model, np.ndarray):  # openTSNE's TSNEEmbedding is an ndarray
        return int(model.shape[0])
    return None


def load_reducer(
    directory: Path,
    method: str,
    expected_sha256: dict[str, str],
    *,
    run: str | None = None,
) -> FittedReducer:
    """Load a reducer written by ``save_reducer``, refusing anything that does not check out.

    Each file is read once, hashed and compared with ``expected_sha256`` BEFORE it is parsed (the
    bytes that were hashed are the bytes that get unpickled). Pickles written with another
    major.minor version of the libraries they depend on are refused too: they may load but behave
    differently. ``run`` only makes the "re-run" hint concrete.
    """
    spec = _check_method(method)
    hint = f"re-run `python -m app reduce {run or '<run>'}`"
    names = reducer_files(method)
    try:
        blobs = artifacts.read_verified_files(Path(directory), expected_sha256, names, hint)
    except artifacts.ArtifactError as exc:
        raise ReducerLoadError(str(exc)) from exc.__cause__

    npz_name = names[0]
    try:
        with np.load(io.BytesIO(blobs[npz_name]), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:  # any parse failure means the same to the user
        raise ReducerLoadError(f"could not load {npz_name}: {exc}; {hint}") from exc
    if meta.get("format") != FORMAT_VERSION or meta.get("method") != method:
        raise ReducerLoadError(
            f"could not load {npz_name}: format {meta.get('format')!r} for method "
            f"{meta.get('method')!r}, expected format {FORMAT_VERSION} for {method!r}; {hint}"
        )

    versions = meta.get("versions", {})
    if spec.pickled:
        installed = _library_versions()
        for lib in spec.libraries:
            stored, now = versions.get(lib), installed.get(lib)
            if stored is None or now is None or _major_minor(stored) != _major_minor(now):
                raise ReducerLoadError(
                    f"could not load {method}.pkl: it was written with {lib} {stored} but "
                    f"{now} is installed (major.minor must match); {hint}"
                )

    scaler = None
    if "scaler_mean" in arrays:
        scaler = (arrays.pop("scaler_mean"), arrays.pop("scaler_std"))
    points = arrays.pop("points")
    if not spec.pickled:
        model = {key[len(method) + 1:]: value for key, value in arrays.items()}
    else:
        pkl_name = names[1]
        for lib in spec.libraries:
            _BEFORE_UNPICKLE.get(lib, lambda: None)()
        try:
            model = pickle.loads(blobs[pkl_name])  # the bytes whose hash was verified above
        except Exception as exc:  # unpickling can raise anything
            raise ReducerLoadError(f"could not load {pkl_name}: {exc!r}; {hint}") from exc
        n_rows = _stored_rows(model)
        if n_rows is not None and n_rows != points.shape[0]:
            raise ReducerLoadError(
                f"could not load {pkl_name}: it holds {n_rows} points but {npz_name} holds "
                f"{points.shape[0]}; {hint}"
            )
    return FittedReducer(
        method=method,
        n_components=int(meta["n_components"]),
        params=meta["params"],
        points=points,
        versions=versions,
        diagnostics=meta.get("diagnostics", {}),
        model=model,
        scaler=scaler,
    )


# --------------------------------------------------------------------------------------------
# streaming projection of huge vectors

_CHUNK_BYTES = 64 * 2**20  # input bytes multiplied at once in StreamingProjector.transform


class StreamingProjector:
    """Shrink very long vectors (a flattened 16x16x256 or 128x128x512 map) batch by batch.

    ``method="sparse_random"`` (default): a seeded *very sparse* random projection (Li, Hastie &
    Church 2006; Achlioptas 2001 with ``density=1/3``). Each output dimension reads about
    ``input_dim * density`` inputs (density ``1/sqrt(input_dim)`` by default) with weights
    ``+-sqrt(1 / (density * n_components))``, so squared distances are preserved in expectation
    (Johnson-Lindenstrauss). The matrix is generated one output row at a time with numpy's
    ``default_rng(random_state)`` straight into CSR form; it is never dense. For 8 388 608 x 2048
    it holds ~5.9 M non-zeros = ~47 MB (float32 + int32 indices) and takes ~0.4 s to build (a
    dense one would be 64 GiB; sklearn's ``SparseRandomProjection`` gives the same size but took
    24 s to build here). ``partial_fit`` is a no-op apart from checks: the matrix depends only on
    ``input_dim``, ``n_components``, ``density`` and the seed, so the same projector can be
    rebuilt later (same numpy version) to place new tiles.

    ``method="ipca"``: ``IncrementalPCA``. It must see data before it can transform: either two
    passes (``partial_fit`` over every batch, then ``transform`` over every batch) or fit on the
    first batches only. Its first fit needs at least ``n_components`` rows, so smaller batches are
    buffered until enough have arrived. It keeps ``n_components x input_dim`` components and each
    update runs an SVD of a ``(n_components + batch) x input_dim`` matrix, which is why it is
    refused above ``max_memory_bytes`` (8.4 M inputs x 2048 components would need ~270 GiB).
    """

    METHODS = ("sparse_random", "ipca")

    def __init__(
        self,
        input_dim: int,
        n_components: int = 2048,
        method: str = "sparse_random",
        random_state: int = 0,
        *,
        density: float | str = "auto",
        max_memory_bytes: int = 4 * 2**30,
    ) -> None:
        self.input_dim = _check_int("input_dim", input_dim, 1)
        self.n_components = _check_int("n_components", n_components, 1, self.input_dim)
        if method not in self.METHODS:
            raise _param_error("method", f"one of {list(self.METHODS)}", method)
        self.method = method
        # Never None: the projection must be rebuildable to place new tiles in the same space.
        self.random_state = _check_random_state(random_state, allow_none=False)
        self.max_memory_bytes = _check_int("max_memory_bytes", max_memory_bytes, 1)
        self.n_batches_seen = 0
        self.n_samples_seen = 0
        self.n_samples_transformed = 0
        self._matrix: sp.csr_matrix | None = None
        self._ipca: Any = None
        self._pending: list[np.ndarray] = []
        if method == "sparse_random":
            if density == "auto":
                self.density = 1.0 / math.sqrt(self.input_dim)
            elif (
                isinstance(density, numbers.Real)
                and not isinstance(density, bool)
                and 0 < density <= 1
            ):
                self.density = float(density)
            else:
                raise _param_error("density", "'auto' or a float in (0, 1]", density)
            self._matrix = self._build_matrix()
        else:
            self.density = None
            estimate = self._ipca_memory_estimate()
            if estimate > self.max_memory_bytes:
                raise ValueError(
                    f"The 'ipca' method needs about {estimate / 2**30:.1f} GiB for input_dim="
                    f"{self.input_dim} and n_components={self.n_components}, over "
                    f"max_memory_bytes={self.max_memory_bytes}. Use method='sparse_random', "
                    "fewer components, or raise max_memory_bytes."
                )
            self._ipca = IncrementalPCA(n_components=self.n_components, copy=False)

    def _ipca_memory_estimate(self) -> int:
        # float32 components + the stacked (2 * n_components) x input_dim matrix and its SVD
        # factors during an update with a batch of n_components rows: ~5 copies of k x d.
        return 4 * self.input_dim * self.n_components * 5

    def _build_matrix(self) -> sp.csr_matrix:
        """Very sparse random matrix (n_components x input_dim), CSR, built row by row."""
        rng = np.random.default_rng(self.random_state)
        k, d = self.n_components, self.input_dim
        counts = rng.binomial(d, self.density, size=k)
        indptr = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        nnz = int(indptr[-1])
        index_dtype = np.int32 if max(d, nnz) < 2**31 else np.int64
        indices = np.empty(nnz, dtype=index_dtype)
        for row in range(k):
            # Floyd's algorithm inside numpy: O(count) work, never O(input_dim).
            cols = rng.choice(d, size=int(counts[row]), replace=False, shuffle=False)
            cols.sort()
            indices[indptr[row] : indptr[row + 1]] = cols
        value = np.float32(1.0 / math.sqrt(self.density * k))
        data = np.where(rng.integers(0, 2, size=nnz, dtype=np.int8) == 1, value, -value)
        return sp.csr_matrix(
            (data.astype(np.float32, copy=False), indices, indptr.astype(index_dtype)),
            shape=(k, d),
        )

    def _check_batch(self, batch: Any) -> np.ndarray:
        arr = np.asarray(batch)
        if arr.ndim >= 2:
            # Accept (b, h, w, c) activation maps: flatten each tile in C order.
            arr = arr.reshape(arr.shape[0], -1)
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise _param_error(
                "batch", f"an array of shape (b, {self.input_dim})", f"shape {np.shape(batch)}"
            )
        if arr.dtype.kind not in "fiub":
            raise _param_error("batch", "an array of finite floats", f"dtype {arr.dtype}")
        return arr

    def _chunks(self, arr: np.ndarray):
        rows = max(1, _CHUNK_BYTES // (4 * self.input_dim))
        for start in range(0, arr.shape[0], rows):
            chunk = np.asarray(arr[start : start + rows], dtype=np.float32)
            if not np.isfinite(chunk).all():
                raise _param_error("batch", "an array of finite floats", "an array with NaN/inf")
            yield chunk

    def partial_fit(self, batch: Any) -> StreamingProjector:
        """Learn from one batch (ipca); for sparse_random only checks it."""
        arr = self._check_batch(batch)
        if self.method == "sparse_random":
            for _ in self._chunks(arr):
                pass
        else:
            # IncrementalPCA modifies its input (copy=False), so always hand it our own copy.
            self._pending.append(np.array(arr, dtype=np.float32, copy=True))
            if not np.isfinite(self._pending[-1]).all():
                self._pending.pop()
                raise _param_error("batch", "an array of finite floats", "an array with NaN/inf")
            buffered = sum(p.shape[0] for p in self._pending)
            first_fit = not hasattr(self._ipca, "components_")
            if not first_fit or buffered >= self.n_components:
                stacked = self._pending[0] if len(self._pending) == 1 else np.vstack(self._pending)
                self._pending = []
                self._ipca.partial_fit(stacked, check_input=True)
        self.n_batches_seen += 1
        self.n_samples_seen += arr.shape[0]
        return self

    def transform(self, batch: Any) -> np.ndarray:
        """Project one batch; returns float32 ``(b, n_components)``."""
        arr = self._check_batch(batch)
        if self.method == "ipca" and not hasattr(self._ipca, "components_"):
            buffered = sum(p.shape[0] for p in self._pending)
            raise RuntimeError(
                f"The 'ipca' projector is not fitted: its first fit needs {self.n_components} "
                f"rows and it has {buffered}. Call partial_fit with more data first."
            )
        out = np.empty((arr.shape[0], self.n_components), dtype=np.float32)
        start = 0
        for chunk in self._chunks(arr):
            stop = start + chunk.shape[0]
            if self.method == "sparse_random":
                if chunk.shape[0] == 1:
                    out[start:stop] = self._matrix @ chunk[0]
                else:
                    out[start:stop] = (self._matrix @ chunk.T).T
            else:
                out[start:stop] = self._ipca.transform(chunk)
            start = stop
        self.n_samples_transformed += arr.shape[0]
        return out

    def describe(self) -> dict[str, Any]:
        """What was done, for the run manifest (JSON-serialisable)."""
        info: dict[str, Any] = {
            "method": self.method,
            "input_dim": self.input_dim,
            "n_components": self.n_components,
            "random_state": self.random_state,
            "n_batches_seen": self.n_batches_seen,
            "n_samples_seen": self.n_samples_seen,
            "n_samples_transformed": self.n_samples_transformed,
            "versions": {
                k: v
                for k, v in _library_versions().items()
                if k in ("python", "numpy", "scipy", "scikit-learn")
            },
        }
        if self.method == "sparse_random":
            m = self._matrix
            info.update(
                kind="very sparse random projection (Li et al. 2006), entries "
                "+-sqrt(1/(density*n_components)) with probability density/2 each",
                generator="numpy.random.default_rng(random_state), row by row",
                density=self.density,
                nnz=int(m.nnz),
                matrix_bytes=int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes),
            )
        else:
            fitted = hasattr(self._ipca, "components_")
            info.update(
                kind="sklearn IncrementalPCA (partial_fit over batches)",
                fitted=fitted,
                n_samples_fit=int(self._ipca.n_samples_seen_) if fitted else 0,
                n_samples_buffered=int(sum(p.shape[0] for p in self._pending)),
                explained_variance_ratio_sum=(
                    float(np.sum(self._ipca.explained_variance_ratio_)) if fitted else None
                ),
                memory_estimate_bytes=self._ipca_memory_estimate(),
            )
        return info
