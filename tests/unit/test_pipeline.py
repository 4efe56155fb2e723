"""app.pipeline: embed (atomic, hash-tied to the model) → reduce; then app.ml.apply on the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import artifacts, pipeline
from app.artifacts import ArtifactError, EmbeddingsRun
from app.data.dataset import TileDataset
from app.ml import apply, extract
from tests.unit.test_extract import N_TILES, make_dataset, make_model


def _rank_of_own_tile(run: EmbeddingsRun, method: str, i: int, placed: tuple) -> int:
    """How many stored tiles lie closer to the placed position than tile ``i`` itself."""
    xy = run.tiles[[f"{method}_x", f"{method}_y"]].to_numpy(float)
    d = np.linalg.norm(xy - np.asarray(placed[:2]), axis=1)
    return int((d < d[i]).sum())


def _save_model(store: Path, run_id: str = "m1", seed: int = 0):
    model = make_model(seed)
    artifacts.save_model_run(
        model, run_id, preset="light", input_size=64, dataset={"name": "tiny"}, split={},
        params={"seed": seed}, metrics={}, history=[], store=store,
    )
    return model


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pipe")
    dataset = make_dataset(root / "datasets" / "tiny")
    model = _save_model(root / "models")
    kw = dict(embeddings_root=root / "emb", model_store=root / "models", progress=False)
    run_path = pipeline.run_embed("m1", dataset.path, "e1", layer="bottleneck",
                                  representation="gap", batch_size=8, **kw)
    return {"root": root, "dataset": dataset, "model": model, "kw": kw, "run_path": run_path}


@pytest.fixture(scope="module")
def reduced(env: dict) -> EmbeddingsRun:
    pipeline.run_reduce("e1", methods=("pca", "tsne"), k_values=range(2, 5),
                        embeddings_root=env["root"] / "emb", progress=False)
    return EmbeddingsRun.open("e1", env["root"] / "emb", model_store=env["root"] / "models")


def test_run_embed_writes_the_manifest_of_the_spec(env: dict) -> None:
    path = env["run_path"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "unet-lens-embeddings/1" and manifest["run_id"] == "e1"
    assert manifest["model_run"] == "m1"
    assert manifest["model_sha256"] == artifacts.sha256_file(
        env["root"] / "models" / "m1" / "model.keras")
    assert (manifest["layer"], manifest["representation"]) == ("bottleneck", "gap")
    assert manifest["dataset"]["path"] == "tiny" and manifest["dataset"]["name"] == "tiny"
    assert manifest["dataset"]["source"] == "synthetic"
    assert manifest["dataset"]["counts"]["tiles"] == N_TILES
    assert manifest["counts"] == {"tiles": N_TILES, "dims": 256}
    params = manifest["params"]
    for key in ("batch_size", "random_state", "dtype", "thumb_size", "threshold",
                "projection", "projection_dims", "activation_shape"):
        assert key in params
    assert {"python", "numpy", "tensorflow", "keras"} <= set(manifest["versions"])
    for name in ("vectors.npy", "tiles.parquet"):
        assert manifest["files"][name] == artifacts.sha256_file(path / name)
    assert manifest["timing"]["seconds"] > 0 and manifest["timing"]["tiles_per_s"] > 0
    run = EmbeddingsRun.open("e1", env["root"] / "emb", model_store=env["root"] / "models")
    assert run.vectors.shape == (N_TILES, 256) and len(run.tiles) == N_TILES
    tid = run.tiles["tile_id"].iloc[0]
    for kind in ("thumb", "true", "pred", "overlay", "image"):
        assert run.file_for(kind, tid) is not None


def test_splits_and_limit(env: dict) -> None:
    ds: TileDataset = env["dataset"]
    split = ds.table["split"].iloc[0]
    path = pipeline.run_embed("m1", ds.path, "e-split", splits=[split], limit=3,
                              representation="avgmax", **env["kw"])
    table = pd.read_parquet(path / "tiles.parquet")
    assert table["tile_id"].tolist() == ds.ids(split)[:3]
    assert json.loads((path / "manifest.json").read_text())["counts"] == {"tiles": 3, "dims": 512}
    with pytest.raises(ValueError, match="splits"):
        pipeline.run_embed("m1", ds.path, "e-bad", splits=["nope"], **env["kw"])
    with pytest.raises(ArtifactError, match="run id"):
        pipeline.run_embed("m1", ds.path, "../escape", **env["kw"])


def test_interrupted_embed_leaves_previous_run_intact(env: dict, monkeypatch) -> None:
    root = env["root"] / "emb"
    path = pipeline.run_embed("m1", env["dataset"].path, "e-atomic", batch_size=8, **env["kw"])
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = extract.pool_activations

    def failing(acts, representation):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("injected failure after the first batch")
        return real(acts, representation)

    monkeypatch.setattr(extract, "pool_activations", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        pipeline.run_embed("m1", env["dataset"].path, "e-atomic", batch_size=8,
                           representation="avgmax", **env["kw"])
    assert calls["n"] == 2
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_changed_model_is_refused(env: dict, tmp_path: Path) -> None:
    store = tmp_path / "models"
    _save_model(store, "m2", seed=0)
    pipeline.run_embed("m2", env["dataset"].path, "e-m2", limit=4, embeddings_root=tmp_path,
                       model_store=store, progress=False)
    EmbeddingsRun.open("e-m2", tmp_path, model_store=store)  # fine while the model is the same
    _save_model(store, "m2", seed=1)  # a different model under the same run id
    with pytest.raises(ArtifactError, match=r"made with model 'm2'.*Re-run `python -m app embed`"):
        EmbeddingsRun.open("e-m2", tmp_path, model_store=store)


def test_run_reduce_writes_coords_sweep_labels_and_manifest(env: dict, reduced) -> None:
    run = reduced
    path = run.path / "reduced"
    coords = pd.read_parquet(path / "coords.parquet")
    assert coords["tile_id"].tolist() == run.tiles["tile_id"].tolist()
    assert {"pca_x", "pca_y", "pca_z", "tsne_x", "tsne_y", "cluster", "silhouette"} <= set(
        coords.columns)
    assert coords[["pca_x", "pca_y", "pca_z", "tsne_x", "tsne_y"]].notna().all().all()
    sweep = json.loads((path / "sweep.json").read_text())
    assert sweep["k"] == [2, 3, 4] and len(sweep["inertia"]) == len(sweep["silhouette"]) == 3
    assert sweep["chosen_k"] == sweep["best_k"]
    assert set(sweep["agreement"]) >= {"has_building", "phase"}
    assert [row["k"] for row in sweep["agreement"]["phase"]] == [2, 3, 4]
    labels = np.load(path / "labels.npy", allow_pickle=False)
    assert labels.shape == (3, N_TILES) and labels.dtype == np.int32
    np.testing.assert_array_equal(coords["cluster"], labels[sweep["k"].index(sweep["chosen_k"])])
    info = run.manifest["reduce"]
    assert info["chosen_k"] == sweep["chosen_k"] and info["params"]["methods"] == ["pca", "tsne"]
    for rel, sha in info["files"].items():
        assert artifacts.sha256_file(run.path / rel) == sha
    assert "reduced/reducers/pca.npz" in info["files"]
    assert "reduced/reducers/tsne.pkl" in info["files"]
    # The run's table now carries the maps (artifacts joins coords.parquet).
    assert "pca_x" in run.tiles.columns and run.sweep["chosen_k"] == sweep["chosen_k"]


def test_reduce_never_runs_the_network(env: dict, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the network must not be loaded by reduce")

    monkeypatch.setattr(artifacts, "load_model", boom)
    monkeypatch.setattr(extract, "extract_embeddings", boom)
    pipeline.run_reduce("e1", methods=("pca",), also_3d=False, k_values=[2, 3], k=3,
                        embeddings_root=env["root"] / "emb", progress=False)
    run = EmbeddingsRun.open("e1", env["root"] / "emb", check_model=False)
    assert run.sweep["chosen_k"] == 3 and "pca_z" not in run.tiles.columns
    # Leave the module's reduced run as the fixture made it for the other tests.
    pipeline.run_reduce("e1", methods=("pca", "tsne"), k_values=range(2, 5),
                        embeddings_root=env["root"] / "emb", progress=False)


def test_recluster(reduced) -> None:
    run = reduced
    np.testing.assert_array_equal(apply.recluster(run, 3),
                                  run.sweep_labels[run.sweep["k"].index(3)])
    five = apply.recluster(run, 5)  # not in the sweep: fitted with the run's seed
    assert five.shape == (N_TILES,) and len(np.unique(five)) == 5
    assert run.memoized(("recluster", 5))
    run.forget(("recluster", 5))
    np.testing.assert_array_equal(apply.recluster(run, 5), five)
    with pytest.raises(ValueError, match="'k'"):
        apply.recluster(run, 1)


def test_place_new_and_embed_for_run(env: dict, reduced) -> None:
    run = reduced
    i = 5
    placed = apply.place_new(run, np.asarray(run.vectors[i], dtype=np.float32))
    assert set(placed) == {"pca", "tsne"}
    row = run.tiles.iloc[i]
    np.testing.assert_allclose(placed["pca"], row[["pca_x", "pca_y", "pca_z"]].astype(float),
                               rtol=1e-4, atol=1e-4)
    # t-SNE places new points by optimisation: near its own stored point, among its neighbours.
    assert _rank_of_own_tile(run, "tsne", i, placed["tsne"]) <= 3
    # An "upload" of a stored tile's image gives its stored vector and map position.
    tid = row["tile_id"]
    vec, prob = apply.embed_for_run(run, env["model"], env["dataset"].image(tid))
    assert prob.shape == (64, 64)
    np.testing.assert_allclose(vec, run.vectors[i].astype(np.float32), rtol=2e-3, atol=1e-3)
    with pytest.raises(ValueError, match="256 values"):
        apply.place_new(run, np.zeros(10))


@pytest.mark.slow
def test_reduce_with_umap_and_3d(env: dict) -> None:
    """UMAP's first call JIT-compiles for tens of seconds on 2 cores, hence ``slow``."""
    pipeline.run_embed("m1", env["dataset"].path, "e-umap", representation="flatten",
                       projection_dims=32, **env["kw"])
    pipeline.run_reduce("e-umap", k_values=range(2, 5), embeddings_root=env["root"] / "emb",
                        progress=False)
    run = EmbeddingsRun.open("e-umap", env["root"] / "emb", model_store=env["root"] / "models")
    cols = ["pca_x", "pca_y", "pca_z", "tsne_x", "tsne_y", "umap_x", "umap_y", "umap_z"]
    assert run.tiles[cols].notna().all().all()
    # UMAP's transform only approximates a training point's position (on 20 points its
    # neighbourhood is most of the map): closer to its own tile than to a typical one, and
    # usually among its nearest.
    umap_xy = run.tiles[["umap_x", "umap_y"]].to_numpy(float)
    ranks = []
    for i in range(6):
        placed = apply.place_new(run, np.asarray(run.vectors[i], dtype=np.float32))
        assert set(placed) == {"pca", "tsne", "umap"} and len(placed["pca"]) == 3
        assert _rank_of_own_tile(run, "tsne", i, placed["tsne"]) <= 3
        d = np.linalg.norm(umap_xy - np.asarray(placed["umap"]), axis=1)
        assert d[i] < np.median(d)
        ranks.append(_rank_of_own_tile(run, "umap", i, placed["umap"]))
    assert np.median(ranks) <= 2
    # Flatten runs rebuild their seeded projector for uploads.
    tid = run.tiles["tile_id"].iloc[3]
    vec, _ = apply.embed_for_run(run, env["model"], env["dataset"].image(tid))
    np.testing.assert_allclose(vec, run.vectors[3].astype(np.float32), rtol=5e-3,
                               atol=5e-3 * float(np.abs(run.vectors[3]).max()))
