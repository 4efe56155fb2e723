"""Orchestration behind ``python -m app embed`` / ``reduce``: the offline steps that write a run.

- :func:`run_embed`: stored model + tile dataset → ``embeddings/<run>/`` (vectors, tile table
  with per-tile metrics, thumbnails, manifest), written atomically: an interrupted run leaves
  the previous one intact.
- :func:`run_reduce`: an embeddings run → ``reduced/`` (one map per registered method of
  ``app.ml.registry``, K-means sweep, per-tile silhouettes, cluster-label agreement, fitted
  reducers) and ``manifest["reduce"]``. Reads only ``vectors.npy`` and ``tiles.parquet``: never
  re-runs the network. It then fits the out-of-distribution guard (:func:`run_ood`).
- :func:`run_ood`: an embeddings run → ``ood/`` (``app.ml.ood``: k-NN index of the training
  tiles, held-out calibration, every tile's score) and ``manifest["ood"]``; also
  ``python -m app ood EID`` for runs made before the guard existed.

What a live request needs from a run (embed one image, place it, re-cluster) is in
``app.ml.apply``; nothing in ``app.ml`` or ``app.web`` imports this module. Every file is
written through ``app.artifacts``.

Decisions:

- PCA is fitted once with 3 components (when ``also_3d``): components are nested, so the 2-D map
  is its first two columns and ``pca_z`` comes for free. UMAP 3-D is a second, full UMAP fit
  (about as long as the 2-D one); only its coordinates are kept (``umap_z`` with ``umap_x``,
  ``umap_y`` still from the 2-D map), not its reducer, so uploads are placed in 2-D only.
  t-SNE stays 2-D. (The registry's ``map_3d`` says which method does what.)
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
import pandas as pd
from tqdm.auto import tqdm

from app import artifacts
from app.artifacts import EmbeddingsRun
from app.data.dataset import TileDataset
from app.fsutil import atomic_dir
from app.ml import ood as ood_lib
from app.ml import registry
from app.ml.cluster import agreement_table, kmeans_sweep, silhouette_per_sample, validate_k
from app.ml.extract import extract_embeddings, tile_id_filter, tile_labels
from app.ml.reduce import FittedReducer, fit_reducer, reducer_payloads

# --------------------------------------------------------------------------- embed


def run_embed(
    model_run: str,
    dataset_path: Path,
    run_id: str,
    *,
    layer: str | None = None,
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
    ``layer`` None: the model's default (``artifacts.model_default_layer``).
    """
    artifacts.validate_run_id(run_id)
    final = artifacts.embeddings_dir(run_id, embeddings_root)
    _, model_sha = artifacts.verify_model_file(model_run, model_store)
    layer = layer or artifacts.model_default_layer(
        artifacts.read_model_manifest(model_run, model_store))
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
            "files": artifacts.hash_files(tmp),
            "timing": {
                "seconds": round(seconds, 3),
                "tiles_per_s": round(summary["n_tiles"] / seconds, 3),
                "extract_seconds": summary["timing"]["seconds"],
            },
        }
        artifacts.write_embeddings_manifest(tmp, manifest)
    return final


# --------------------------------------------------------------------------- reduce


def _check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    methods = tuple(methods)
    known = registry.reducer_names()
    bad = [m for m in methods if m not in known]
    if not methods or bad or len(set(methods)) != len(methods):
        raise ValueError(
            f"The 'methods' parameter must list distinct methods of {list(known)}. "
            f"Got {list(methods)!r} instead."
        )
    return methods


def _map_steps(methods: tuple[str, ...], also_3d: bool) -> list[tuple[str, bool]]:
    """(method, third axis?) in fitting order: every map, then the "refit" 3-D ones."""
    refit_3d = [m for m in methods if also_3d and registry.reducer(m).map_3d == "refit"]
    return [(m, False) for m in methods] + [(m, True) for m in refit_3d]


def _fit_maps(
    X: np.ndarray, steps: list[tuple[str, bool]], *, also_3d: bool, random_state: int,
    method_params: dict[str, dict], bar: Any,
) -> tuple[dict[str, np.ndarray], dict[str, FittedReducer], dict[str, Any], dict[str, float]]:
    """Fit every map of ``steps``: coordinate columns ``<method>_x/_y[/_z]``, the reducers to
    store, diagnostics and seconds per step."""
    coords: dict[str, np.ndarray] = {}
    reducers: dict[str, FittedReducer] = {}
    diagnostics: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for method, third_axis in steps:
        spec = registry.reducer(method)
        step = f"{method}3d" if third_axis else method
        bar.set_postfix_str(step)
        t0 = time.perf_counter()
        params = {**spec.pipeline_params, **method_params.get(method, {})}
        if third_axis:
            three = fit_reducer(method, X, n_components=3, random_state=random_state, **params)
            coords[f"{method}_z"] = three.points[:, 2]
            diagnostics[step] = {"params": three.params}
        else:
            if spec.map_3d == "nested":
                dims = 3 if also_3d and min(X.shape) >= 3 else 2
                n_components = min(dims, *X.shape)
            else:
                n_components = 2
            reducer = fit_reducer(method, X, n_components=n_components,
                                  random_state=random_state, **params)
            for j, axis in enumerate("xyz"[: reducer.n_components]):
                coords[f"{method}_{axis}"] = reducer.points[:, j]
            reducers[method] = reducer
            diagnostics[method] = reducer.diagnostics
        timings[step] = round(time.perf_counter() - t0, 3)
        bar.update(1)
    return coords, reducers, diagnostics, timings


def _agreement(sweep: Any, truths: dict[str, np.ndarray],
               X: np.ndarray) -> tuple[dict[str, list[dict]], list[str]]:
    """Cluster-label agreement rows per label with >= 2 known classes; the labels skipped."""
    agreement: dict[str, list[dict]] = {}
    skipped: list[str] = []
    for name, truth in truths.items():
        known = {v for v in truth if v != "unknown"}
        if len(known) < 2:
            skipped.append(name)
            continue
        rows = agreement_table(sweep, truth, X, exclude=("unknown",))
        agreement[name] = json.loads(rows.to_json(orient="records"))
    return agreement, skipped


def run_reduce(
    run_id: str,
    *,
    methods: Iterable[str] | None = None,
    n_components: int = 2,
    also_3d: bool = True,
    k_values: Iterable[int] = range(2, 11),
    k: int | None = None,
    random_state: int = 0,
    tsne_params: dict | None = None,
    umap_params: dict | None = None,
    method_params: dict[str, dict] | None = None,
    embeddings_root: Path | None = None,
    model_store: Path | None = None,
    check_model: bool = False,
    progress: bool = True,
    ood: bool = True,
    ood_params: dict[str, Any] | None = None,
) -> Path:
    """Fit the maps and the K-means sweep of embeddings run ``run_id``; write ``reduced/``
    atomically, then ``manifest["reduce"]``; return the ``reduced/`` folder.

    ``methods`` default to every registered map method. ``method_params`` (method → keyword
    parameters; ``tsne_params`` / ``umap_params`` are the same for those two) go to the
    method's fit over its registry ``pipeline_params``. ``k`` is the chosen number of clusters
    (default: the sweep's best silhouette); it is added to the sweep when missing from
    ``k_values``. ``check_model`` re-checks the model's hash (off by default: reduce never
    touches the network). ``ood`` then fits the out-of-distribution guard with ``ood_params``
    (:func:`run_ood`; a run it cannot be fitted on records why instead).
    """
    methods = _check_methods(registry.reducer_names() if methods is None else methods)
    if n_components != 2:
        raise ValueError(
            "The 'n_components' parameter must be 2 (the dashboard's maps; 3-D coordinates come "
            f"from also_3d). Got {n_components!r} instead."
        )
    run = EmbeddingsRun.open(run_id, embeddings_root, model_store=model_store,
                             check_model=check_model)
    table = run.tiles
    n = len(table)
    X = run.vectors_float32()
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
    per_method = {"tsne": tsne_params, "umap": umap_params, **(method_params or {})}

    started = time.perf_counter()
    steps = _map_steps(methods, also_3d)
    with tqdm(total=len(steps) + 1, desc=f"reduce {run_id}", unit="step",
              disable=not progress) as bar:
        maps, reducers, diagnostics, timings = _fit_maps(
            X, steps, also_3d=also_3d, random_state=random_state, method_params=per_method,
            bar=bar,
        )
        bar.set_postfix_str("kmeans")
        t0 = time.perf_counter()
        sweep = kmeans_sweep(X, ks, random_state=random_state)
        timings["kmeans"] = round(time.perf_counter() - t0, 3)
        bar.update(1)

    chosen_k = k if k is not None else sweep.best_k if sweep.best_k is not None else ks[0]
    labels = sweep.labels[chosen_k]
    sil_sample = sweep.params.get("silhouette_sample")
    try:
        silhouette = silhouette_per_sample(X, labels, sample=sil_sample,
                                           random_state=random_state)
    except ValueError:  # a degenerate clustering (one cluster): silhouette undefined
        silhouette = np.full(n, np.nan)

    truths = tile_labels(table)
    agreement, skipped_labels = _agreement(sweep, truths, X)

    # Columns in registry order: pca_x, pca_y, pca_z, tsne_x, tsne_y, umap_x, umap_y, umap_z...
    columns = {"tile_id": table["tile_id"].to_numpy()}
    for method in registry.reducer_names():
        columns.update({c: maps[c] for c in (f"{method}_{a}" for a in "xyz") if c in maps})
    columns["cluster"] = labels.astype(np.int32)
    columns["silhouette"] = silhouette.astype(np.float32)
    coords_df = pd.DataFrame(columns)
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
        "vectors_sha256": run.manifest.get("files", {}).get(artifacts.VECTORS_FILE),
    }
    if method_params:
        params["method_params"] = method_params
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
    files = artifacts.write_reduced(
        run.path, coords_df, sweep_doc, np.stack([sweep.labels[v] for v in sweep.k]),
        {m: reducer_payloads(r) for m, r in reducers.items()},
    )
    artifacts.update_embeddings_manifest(run, reduce={
        "params": params,
        "files": files,
        "created": artifacts.now_iso(),
        "versions": artifacts.versions(),
        "chosen_k": int(chosen_k),
        "best_k": sweep.best_k,
        "timing": {"seconds": round(time.perf_counter() - started, 3), **timings},
    })
    if ood:
        run_ood(run_id, ood_params, embeddings_root=embeddings_root, model_store=model_store,
                progress=progress, skip_unfit=True)
    return run.path / artifacts.REDUCED_DIR


# --------------------------------------------------------------------------- ood


def run_ood(
    run_id: str,
    params: dict[str, Any] | None = None,
    *,
    embeddings_root: Path | None = None,
    model_store: Path | None = None,
    progress: bool = True,
    skip_unfit: bool = False,
) -> dict[str, Any]:
    """Fit the out-of-distribution guard of embeddings run ``run_id`` (``app.ml.ood``), write
    ``ood/`` atomically and ``manifest["ood"]``; return that manifest entry.

    With the run's own representation it reads only the stored vectors; another pooling
    (``params["representation"]``) re-embeds the run's stored full-resolution tiles with its
    model. ``skip_unfit``: a run the guard cannot be fitted on (no split column, no training
    or held-out tiles) records why in ``manifest["ood"]["skipped"]`` instead of raising.
    """
    p = ood_lib.validate_params(params)
    run = EmbeddingsRun.open(run_id, embeddings_root, model_store=model_store, check_model=False)
    started = time.perf_counter()
    vectors = None
    own = run.manifest.get("representation", "gap")
    if p["representation"] not in (None, own):
        model = artifacts.load_model(run.model_run, model_store)
        with tqdm(total=len(run.tiles), desc=f"ood {run_id}: {p['representation']}",
                  unit="tile", disable=not progress) as bar:
            vectors = ood_lib.vectors_from_stored_tiles(
                run, model, p["representation"], progress=lambda d, _t: bar.update(d - bar.n))
    try:
        index, scores = ood_lib.fit_ood(run, p, vectors=vectors)
    except ValueError as exc:
        if not skip_unfit:
            raise
        entry = {"skipped": str(exc), "params": p, "created": artifacts.now_iso()}
        artifacts.update_embeddings_manifest(run, ood=entry)
        return entry
    table = ood_lib.scores_table(run.tiles["tile_id"].astype(str).to_numpy(), index, scores)
    files = artifacts.write_ood(run.path, index.to_arrays(with_vectors=vectors is not None),
                                table)
    entry = {
        "params": index.params,
        "info": index.info,
        "files": files,
        "created": artifacts.now_iso(),
        "versions": artifacts.versions(),
        "vectors_sha256": run.manifest.get("files", {}).get(artifacts.VECTORS_FILE),
        "timing": {"seconds": round(time.perf_counter() - started, 3)},
    }
    artifacts.update_embeddings_manifest(run, ood=entry)
    return entry


__all__ = ["run_embed", "run_ood", "run_reduce"]
