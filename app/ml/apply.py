"""What a live request needs from a stored run: embed one image, place it on the maps, re-cluster.

The offline steps (``app.pipeline``: embed a dataset, fit the maps) write a run; the dashboard,
the API and the model service only read it through these functions, so nothing in ``app.ml`` or
``app.web`` imports the pipeline. What is derived from a run (fitted reducers, re-clustered
labels, the run's projector and feature model) is kept with the run by ``EmbeddingsRun.memo``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.artifacts import EmbeddingsRun, reducer_file
from app.ml.cluster import fit_kmeans, validate_k
from app.ml.extract import embed_images, feature_model, make_projector
from app.ml.reduce import FittedReducer, load_reducer, reducer_files

__all__ = ["embed_for_run", "load_reducers", "place_new", "recluster"]


def recluster(run: EmbeddingsRun, k: int) -> np.ndarray:
    """Cluster labels (n_tiles,) int32 for ``k``: the stored sweep's when k was swept, else a
    K-means fit like the sweep's (same algorithm, seed and n_init), kept with the run."""
    k = validate_k(k)
    sweep = run.sweep
    if sweep is not None and run.sweep_labels is not None and k in sweep.get("k", []):
        return np.asarray(run.sweep_labels[sweep["k"].index(k)], dtype=np.int32)

    def fit() -> np.ndarray:
        kparams = (sweep or {}).get("params", {})
        info = run.manifest.get("reduce") or {}
        random_state = kparams.get("random_state", info.get("params", {}).get("random_state", 0))
        X = run.vectors_float32()
        if k > X.shape[0] - 1:
            raise ValueError(f"The 'k' parameter must be <= {X.shape[0] - 1} for this run. "
                             f"Got {k!r} instead.")
        model = fit_kmeans(
            X, k, random_state=random_state, n_init=kparams.get("n_init", "auto"),
            minibatch=kparams.get("algorithm") == "minibatch_kmeans",
            batch_size=kparams.get("batch_size") or None,
        )
        return model.labels_.astype(np.int32)

    return run.memo(("recluster", k), fit)


def load_reducers(run: EmbeddingsRun) -> dict[str, FittedReducer]:
    """The run's fitted reducers (method → FittedReducer), hash-checked, loaded once per run."""

    def load() -> dict[str, FittedReducer]:
        info = run.reduce_info()
        files = info.get("files", {})
        out = {}
        for method in info["params"]["methods"]:
            expected = {name: files.get(reducer_file(name))
                        for name in reducer_files(method)}
            out[method] = load_reducer(run.reducer_dir(), method, expected, run=run.run_id)
        return out

    return run.memo("reducers", load)


def place_new(run: EmbeddingsRun, vector: np.ndarray) -> dict[str, tuple[float, ...]]:
    """Coordinates of a new vector on each stored map: method → (x, y[, z for PCA])."""
    vec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    dims = int(run.manifest.get("counts", {}).get("dims", vec.shape[1]))
    if vec.shape[1] != dims:
        raise ValueError(f"The 'vector' parameter must have {dims} values (this run's "
                         f"representation). Got {vec.shape[1]} instead.")
    return {
        method: tuple(float(v) for v in reducer.transform(vec)[0])
        for method, reducer in load_reducers(run).items()
    }


def _projector(run: EmbeddingsRun, image: np.ndarray) -> Any | None:
    """The run's stored projection of flattened maps (None when it kept them raw); checks that
    ``image`` has the run's tile size, which flattening needs."""
    sizes = sorted({int(v) for v in run.tiles["size"]})
    if image.shape[:2] != (sizes[0], sizes[0]):
        raise ValueError(
            f"embeddings run {run.run_id!r} flattens {sizes[0]}x{sizes[0]} tiles; the image "
            f"must be that size. Got {image.shape[1]}x{image.shape[0]} instead."
        )
    info = run.manifest.get("params", {}).get("projector")
    if info and info.get("method") != "sparse_random":
        raise ValueError(
            f"embeddings run {run.run_id!r} was projected with {info.get('method')!r}, "
            "which is not stored; new images cannot be placed on its maps."
        )
    if not info:
        return None
    return run.memo("projector", lambda: make_projector(int(info["input_dim"]), {
        "projection": "sparse_random", "projection_dims": info["n_components"],
        "random_state": info["random_state"],
    }))


def embed_for_run(
    run: EmbeddingsRun, model: Any, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(vector (dims,), probability map (H, W)) of one (H, W, 3) image, computed exactly as the
    run's tiles were (layer, representation, projection). ``model`` must be the run's model;
    flatten runs need an image of the run's tile size."""
    representation = run.manifest.get("representation", "gap")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"The 'image' parameter must be (H, W, 3). Got {image.shape} instead.")
    projector = _projector(run, image) if representation == "flatten" else None
    # Keyed by the model's id; the model is kept in the value so the id stays valid.
    _, fmodel = run.memo(("feature_model", id(model), run.layer),
                         lambda: (model, feature_model(model, run.layer)))
    vec, prob = embed_images(model, image[None].astype(np.float32), layer=run.layer,
                             representation=representation, projector=projector, fmodel=fmodel)
    dims = int(run.manifest["counts"]["dims"])
    if vec.shape[1] != dims:
        raise ValueError(f"This image gives a {vec.shape[1]}-dim vector but run "
                         f"{run.run_id!r} holds {dims}-dim vectors.")
    return vec[0], prob[0]
