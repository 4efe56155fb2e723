"""Orchestration behind ``python -m app embed`` / ``reduce`` and the dashboard's run helpers.

- :func:`run_embed`: stored model + tile dataset → ``embeddings/<run>/`` (vectors, tile table
  with per-tile metrics, thumbnails, manifest), written atomically: an interrupted run leaves
  the previous one intact.
- :func:`run_reduce`: an embeddings run → ``reduced/`` (PCA / t-SNE / UMAP maps, K-means sweep,
  per-tile silhouettes, cluster-label agreement, fitted reducers) and ``manifest["reduce"]``.
  Reads only ``vectors.npy`` and ``tiles.parquet``: never re-runs the network.
- :func:`recluster`, :func:`place_new`, :func:`embed_for_run`: what the dashboard needs to
  recolour by another k and to place an uploaded image on the stored maps.

Decisions:

- PCA is fitted once with 3 components (when ``also_3d``): components are nested, so the 2-D map
  is its first two columns and ``pca_z`` comes for free. UMAP 3-D is a second, full UMAP fit
  (about as long as the 2-D one); only its coordinates are kept (``umap_z`` with ``umap_x``,
  ``umap_y`` still from the 2-D map), not its reducer, so uploads are placed in 2-D only.
  t-SNE stays 2-D.
- K-means and silhouettes run on the stored vectors themselves (not on a 2-D map).
- k values the run is too small for (k > n_tiles - 1) are dropped and recorded.
- Cluster agreement is computed for every per-tile label of :func:`app.ml.extract.tile_labels`
  that has at least 2 known classes; "unknown" entries are left out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app import artifacts
from app.artifacts import ArtifactError, EmbeddingsRun
from app.fsutil import atomic_dir, sha256_file

REDUCE_METHODS: tuple[str, ...] = ("pca", "tsne", "umap")
#: Rows of vectors cast to float32 at a time (bounded memory for huge runs).
_CHUNK_ROWS = 4096


# --------------------------------------------------------------------------- embed


def run_embed(
    model_run: str,
    dataset_path: Path,
    run_id: str,
    *,
    layer: str = "bottleneck",
    representation: str = "gap",
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    embeddings_root: Path | None = None,
    model_store: Path | None = None,
    **extract_kwargs: Any,
) -> Path:
    """Extract embeddings of ``dataset_path``'s tiles with stored model ``model_run`` into
    ``embeddings/<run_id>/`` (atomically) and return that folder.

    ``extract_kwargs`` go to :func:`app.ml.extract.extract_embeddings` (batch_size,
    projection_dims, projection, random_state, dtype, thumb_size, threshold, progress).
    """
    from app.data.dataset import TileDataset
    from app.ml.extract import extract_embeddings, tile_id_filter

    artifacts.validate_run_id(run_id)
    final = artifacts.embeddings_dir(run_id, embeddings_root)
    _, model_sha = artifacts.verify_model_file(model_run, model_store)
    model = artifacts.load_model(model_run, model_store)
    dataset = TileDataset.open(Path(dataset_path))
    tile_ids = tile_id_filter(dataset.table, splits, limit)
    if not tile_ids:
        raise ValueError(f"No tiles to embed in {dataset_path} for splits {splits!r}.")

    final.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with atomic_dir(final) as tmp:
        summary = extract_embeddings(
            model, dataset, tmp, tile_ids=tile_ids, layer=layer,
            representation=representation, **extract_kwargs,
        )
        seconds = time.perf_counter() - start
        chosen = dataset.table.set_index("tile_id").loc[tile_ids]
        manifest = {
            "format": artifacts.EMBEDDINGS_FORMAT,
            "run_id": run_id,
            "created": artifacts.now_iso(),
            "model_run": model_run,
            "model_sha256": model_sha,
            "layer": layer,
            "representation": representation,
            "dataset": {
                "path": Path(dataset_path).name,
                "name": dataset.manifest.get("name"),
                "source": dataset.manifest.get("source"),
                "format": dataset.manifest.get("format"),
                "created": dataset.manifest.get("created"),
                "counts": {
                    "tiles": len(tile_ids),
                    **{str(k): int(v) for k, v in chosen["split"].value_counts().items()},
                },
            },
            "counts": {"tiles": summary["n_tiles"], "dims": summary["dims"]},
            "params": {
                **summary["params"],
                "activation_shape": summary["activation_shape"],
                "splits": list(splits) if splits else None,
                "limit": limit,
            },
            "versions": artifacts.versions(),
            "files": {
                name: sha256_file(tmp / name) for name in ("vectors.npy", "tiles.parquet")
            },
            "timing": {
                "seconds": round(seconds, 3),
                "tiles_per_s": round(summary["n_tiles"] / seconds, 3),
                "extract_seconds": summary["timing"]["seconds"],
            },
        }
        artifacts.write_json(tmp / "manifest.json", manifest)
    return final


# --------------------------------------------------------------------------- reduce


def load_vectors(run: EmbeddingsRun, chunk_rows: int = _CHUNK_ROWS) -> np.ndarray:
    """The run's vectors as float32, cast chunk by chunk from the memory-mapped file."""
    src = run.vectors
    out = np.empty(src.shape, dtype=np.float32)
    for start in range(0, src.shape[0], chunk_rows):
        out[start:start + chunk_rows] = src[start:start + chunk_rows]
    return out


def run_reduce(
    run_id: str,
    *,
    methods: Iterable[str] = REDUCE_METHODS,
    n_components: int = 2,
    also_3d: bool = True,
    k_values: Iterable[int] = range(2, 11),
    k: int | None = None,
    random_state: int = 0,
    tsne_params: dict | None = None,
    umap_params: dict | None = None,
    embeddings_root: Path | None = None,
    model_store: Path | None = None,
    check_model: bool = False,
    progress: bool = True,
) -> Path:
    """Fit the maps and the K-means sweep of embeddings run ``run_id``; write ``reduced/``
    atomically, then ``manifest["reduce"]``; return the ``reduced/`` folder.

    ``k`` is the chosen number of clusters (default: the sweep's best silhouette); it is added to
    the sweep when missing from ``k_values``. ``check_model`` re-checks the model's hash (off by
    default: reduce never touches the network).
    """
    from tqdm.auto import tqdm

    from app.ml.cluster import agreement_table, kmeans_sweep, silhouette_per_sample, validate_k
    from app.ml.extract import tile_labels
    from app.ml.reduce import fit_reducer, save_reducer

    methods = tuple(methods)
    bad = [m for m in methods if m not in REDUCE_METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise ValueError(
            f"The 'methods' parameter must list distinct methods of {list(REDUCE_METHODS)}. "
            f"Got {list(methods)!r} instead."
        )
    if n_components != 2:
        raise ValueError(
            "The 'n_components' parameter must be 2 (the dashboard's maps; 3-D coordinates come "
            f"from also_3d). Got {n_components!r} instead."
        )
    run = EmbeddingsRun.open(run_id, embeddings_root, model_store=model_store,
                             check_model=check_model)
    table = run.tiles
    n = len(table)
    X = load_vectors(run)
    ks = sorted({validate_k(v) for v in k_values} | ({validate_k(k)} if k is not None else set()))
    dropped = [v for v in ks if v > n - 1]
    ks = [v for v in ks if v <= n - 1]
    if not ks or (k is not None and k in dropped):
        raise ValueError(
            f"Run {run_id!r} has {n} tiles; K-means needs k <= {n - 1}. Got k values "
            f"{sorted(set(ks) | set(dropped))}."
        )
    tsne_params = dict(tsne_params or {})
    umap_params = dict(umap_params or {})

    started = time.perf_counter()
    coords: dict[str, np.ndarray] = {"tile_id": table["tile_id"].to_numpy()}
    reducers = {}
    timings: dict[str, float] = {}
    diagnostics: dict[str, Any] = {}
    steps = [*methods, *(["umap3d"] if also_3d and "umap" in methods else []), "kmeans"]
    bar = tqdm(steps, desc=f"reduce {run_id}", unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        t0 = time.perf_counter()
        if step == "pca":
            dims = 3 if also_3d and min(X.shape) >= 3 else 2
            reducer = fit_reducer("pca", X, n_components=min(dims, *X.shape),
                                  random_state=random_state)
            for j, axis in enumerate("xyz"[: reducer.n_components]):
                coords[f"pca_{axis}"] = reducer.points[:, j]
        elif step == "tsne":
            reducer = fit_reducer("tsne", X, n_components=2, random_state=random_state,
                                  **tsne_params)
            coords["tsne_x"], coords["tsne_y"] = reducer.points[:, 0], reducer.points[:, 1]
        elif step == "umap":
            reducer = fit_reducer("umap", X, n_components=2, random_state=random_state,
                                  **umap_params)
            coords["umap_x"], coords["umap_y"] = reducer.points[:, 0], reducer.points[:, 1]
        elif step == "umap3d":
            three = fit_reducer("umap", X, n_components=3, random_state=random_state,
                                **umap_params)
            coords["umap_z"] = three.points[:, 2]
            diagnostics["umap3d"] = {"params": three.params}
            reducer = None
        else:
            sweep = kmeans_sweep(X, ks, random_state=random_state)
            reducer = None
        if reducer is not None:
            reducers[step] = reducer
            diagnostics[step] = reducer.diagnostics
        timings[step] = round(time.perf_counter() - t0, 3)
    bar.close()

    chosen_k = k if k is not None else sweep.best_k if sweep.best_k is not None else ks[0]
    labels = sweep.labels[chosen_k]
    sil_sample = sweep.params.get("silhouette_sample")
    try:
        silhouette = silhouette_per_sample(X, labels, sample=sil_sample,
                                           random_state=random_state)
    except ValueError:  # a degenerate clustering (one cluster): silhouette undefined
        silhouette = np.full(n, np.nan)
    coords["cluster"] = labels.astype(np.int32)
    coords["silhouette"] = silhouette.astype(np.float32)

    truths = tile_labels(table)
    agreement: dict[str, list[dict]] = {}
    skipped_labels: list[str] = []
    for name, truth in truths.items():
        known = {v for v in truth if v != "unknown"}
        if len(known) < 2:
            skipped_labels.append(name)
            continue
        rows = agreement_table(sweep, truth, X, exclude=("unknown",))
        agreement[name] = json.loads(rows.to_json(orient="records"))

    import pandas as pd

    order = ["tile_id", "pca_x", "pca_y", "pca_z", "tsne_x", "tsne_y", "umap_x", "umap_y",
             "umap_z", "cluster", "silhouette"]
    coords_df = pd.DataFrame({c: coords[c] for c in order if c in coords})
    params = {
        "methods": list(methods),
        "n_components": n_components,
        "also_3d": also_3d,
        "k_values": ks,
        "k_values_dropped": dropped,
        "k": k,
        "random_state": random_state,
        "tsne_params": tsne_params,
        "umap_params": umap_params,
        "reducer_params": {m: r.params for m, r in reducers.items()},
        "kmeans": sweep.params,
        "n_tiles": n,
        "dims": int(X.shape[1]),
        "vectors_sha256": run.manifest.get("files", {}).get("vectors.npy"),
    }
    sweep_doc = {
        **sweep.to_dict(),
        "chosen_k": int(chosen_k),
        "agreement": agreement,
        "agreement_skipped": skipped_labels,
        "label_classes": {
            name: sorted({str(v) for v in truths[name]}) for name in truths
        },
        "diagnostics": diagnostics,
        "timing": timings,
    }
    final = run.path / "reduced"
    with atomic_dir(final) as tmp:
        coords_df.to_parquet(tmp / "coords.parquet", index=False)
        artifacts.write_json(tmp / "sweep.json", sweep_doc)
        np.save(tmp / "labels.npy", np.stack([sweep.labels[v] for v in sweep.k]).astype(np.int32),
                allow_pickle=False)
        files = {
            f"reduced/{name}": sha256_file(tmp / name)
            for name in ("coords.parquet", "sweep.json", "labels.npy")
        }
        for reducer in reducers.values():
            for name, sha in save_reducer(reducer, tmp / "reducers").items():
                files[f"reduced/reducers/{name}"] = sha
    manifest = artifacts.read_json(run.path / "manifest.json", f"embeddings run {run_id!r}")
    manifest["reduce"] = {
        "params": params,
        "files": files,
        "created": artifacts.now_iso(),
        "versions": artifacts.versions(),
        "chosen_k": int(chosen_k),
        "best_k": sweep.best_k,
        "timing": {"seconds": round(time.perf_counter() - started, 3), **timings},
    }
    artifacts.write_json(run.path / "manifest.json", manifest)
    return final


# --------------------------------------------------------------------------- dashboard helpers


def _reduce_info(run: EmbeddingsRun) -> dict:
    info = run.manifest.get("reduce")
    if not info:
        raise ArtifactError(
            f"embeddings run {run.run_id!r} has no maps yet. Run `python -m app reduce "
            f"{run.run_id}`."
        )
    return info


def recluster(run: EmbeddingsRun, k: int) -> np.ndarray:
    """Cluster labels (n_tiles,) int32 for ``k``: the stored sweep's when k was swept, else a
    K-means fit like the sweep's (same algorithm, seed and n_init). Results are cached per run."""
    from app.ml.cluster import validate_k

    k = validate_k(k)
    sweep = run.sweep
    if sweep is not None and run.sweep_labels is not None and k in sweep.get("k", []):
        return np.asarray(run.sweep_labels[sweep["k"].index(k)], dtype=np.int32)
    cache = run._cache.setdefault("recluster", {})
    if k not in cache:
        kparams = (sweep or {}).get("params", {})
        info = run.manifest.get("reduce") or {}
        random_state = kparams.get("random_state", info.get("params", {}).get("random_state", 0))
        X = load_vectors(run)
        if k > X.shape[0] - 1:
            raise ValueError(f"The 'k' parameter must be <= {X.shape[0] - 1} for this run. "
                             f"Got {k!r} instead.")
        n_init = kparams.get("n_init", "auto")
        if kparams.get("algorithm") == "minibatch_kmeans":
            from sklearn.cluster import MiniBatchKMeans

            model = MiniBatchKMeans(n_clusters=k, random_state=random_state, n_init=n_init,
                                    batch_size=kparams.get("batch_size") or 4096)
        else:
            from sklearn.cluster import KMeans

            model = KMeans(n_clusters=k, random_state=random_state, n_init=n_init)
        cache[k] = model.fit(X).labels_.astype(np.int32)
    return cache[k]


def load_reducers(run: EmbeddingsRun) -> dict:
    """The run's fitted reducers (method → FittedReducer), hash-checked, loaded once per run."""
    from app.ml.reduce import load_reducer, reducer_files

    if "reducers" not in run._cache:
        info = _reduce_info(run)
        files = info.get("files", {})
        out = {}
        for method in info["params"]["methods"]:
            expected = {name: files.get(f"reduced/reducers/{name}")
                        for name in reducer_files(method)}
            out[method] = load_reducer(run.reducer_dir(), method, expected, run=run.run_id)
        run._cache["reducers"] = out
    return run._cache["reducers"]


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


def embed_for_run(
    run: EmbeddingsRun, model: Any, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(vector (dims,), probability map (H, W)) of one (H, W, 3) image, computed exactly as the
    run's tiles were (layer, representation, projection). ``model`` must be the run's model;
    flatten runs need an image of the run's tile size."""
    from app.ml.extract import embed_images, feature_model, make_projector

    representation = run.manifest.get("representation", "gap")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"The 'image' parameter must be (H, W, 3). Got {image.shape} instead.")
    projector = None
    if representation == "flatten":
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
        if info:
            if "projector" not in run._cache:
                run._cache["projector"] = make_projector(int(info["input_dim"]), {
                    "projection": "sparse_random", "projection_dims": info["n_components"],
                    "random_state": info["random_state"],
                })
            projector = run._cache["projector"]
    cache = run._cache.setdefault("feature_model", {})
    key = (id(model), run.layer)
    if key not in cache:
        cache[key] = (model, feature_model(model, run.layer))  # keep model alive: id stays valid
    vec, prob = embed_images(model, image[None].astype(np.float32), layer=run.layer,
                             representation=representation, projector=projector,
                             fmodel=cache[key][1])
    dims = int(run.manifest["counts"]["dims"])
    if vec.shape[1] != dims:
        raise ValueError(f"This image gives a {vec.shape[1]}-dim vector but run "
                         f"{run.run_id!r} holds {dims}-dim vectors.")
    return vec[0], prob[0]


__all__ = [
    "REDUCE_METHODS", "embed_for_run", "load_reducers", "load_vectors", "place_new",
    "recluster", "run_embed", "run_reduce",
]
