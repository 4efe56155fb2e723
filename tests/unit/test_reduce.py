"""PCA / t-SNE / UMAP maps, their persistence, and the streaming projector.

Data stay small (300 x 50 blobs): t-SNE and UMAP are fitted once per module. UMAP's first fit and
transform JIT-compile with numba (~20 s on 2 cores), hence the ``slow`` marker on its tests.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from app.ml import reduce as reduce_mod
from app.ml import registry
from app.ml.reduce import (
    FittedReducer,
    ReducerLoadError,
    StreamingProjector,
    fit_reducer,
    load_reducer,
    reducer_files,
    save_reducer,
)

N_TRAIN = 300


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """300 training points and 12 held-out points (3 per blob) of 4 blobs in 50-D."""
    X, y = make_blobs(
        n_samples=N_TRAIN + 12, n_features=50, centers=4, cluster_std=1.5, random_state=0
    )
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


@pytest.fixture(scope="module")
def fitted_tsne(blobs) -> FittedReducer:
    return fit_reducer("tsne", blobs[0], random_state=0)


@pytest.fixture(scope="module")
def fitted_umap(blobs) -> FittedReducer:
    return fit_reducer("umap", blobs[0], random_state=0)


def _fitted(request, method: str, blobs) -> FittedReducer:
    if method == "pca":
        return fit_reducer("pca", blobs[0], n_components=3)
    return request.getfixturevalue(f"fitted_{method}")


def _nearest_blob(reducer: FittedReducer, y_train: np.ndarray, new_points: np.ndarray) -> list:
    """The blob of each new point's nearest training point in the map."""
    d = np.linalg.norm(new_points[:, None, :] - reducer.points[None, :, :], axis=2)
    return y_train[d.argmin(axis=1)].tolist()


METHOD_PARAMS = [
    "pca",
    "tsne",
    pytest.param("umap", marks=pytest.mark.slow),
]

# ----------------------------------------------------------------------------------------- PCA


def test_pca_matches_sklearn_up_to_sign(blobs):
    X = blobs[0]
    reducer = fit_reducer("pca", X, n_components=3)
    expected = PCA(n_components=3, svd_solver="auto", random_state=0).fit_transform(X)
    assert reducer.points.shape == (N_TRAIN, 3) and reducer.points.dtype == np.float32
    for j in range(3):
        sign = np.sign(np.dot(reducer.points[:, j], expected[:, j]))
        np.testing.assert_allclose(sign * reducer.points[:, j], expected[:, j], rtol=1e-4,
                                   atol=1e-3)
    np.testing.assert_array_equal(reducer.transform(X), reducer.points)
    ratios = reducer.diagnostics["explained_variance_ratio"]
    assert len(ratios) == 3 and ratios == sorted(ratios, reverse=True)
    assert reducer.params["random_state"] == 0 and reducer.params["n_components"] == 3
    json.dumps(reducer.params), json.dumps(reducer.diagnostics)  # JSON-serialisable
    assert reducer.versions["scikit-learn"]


def test_standardize_stores_mean_and_std(blobs):
    X = blobs[0].copy()
    X[:, 0] *= 1000.0  # one loud column would dominate an unscaled PCA
    X[:, 1] = 7.0  # a dead channel: std 0 must not divide by zero
    raw = fit_reducer("pca", X, n_components=2)
    scaled = fit_reducer("pca", X, n_components=2, standardize=True)
    assert raw.diagnostics["explained_variance_ratio"][0] > 0.99
    assert scaled.diagnostics["explained_variance_ratio"][0] < 0.9
    assert scaled.params["standardize"] is True and raw.params["standardize"] is False
    mean, std = scaled.scaler
    assert std[1] == 1.0 and np.isfinite(scaled.points).all()
    expected = PCA(n_components=2).fit_transform((X - mean) / std)
    np.testing.assert_allclose(np.abs(scaled.points), np.abs(expected), atol=1e-3)
    np.testing.assert_array_equal(scaled.transform(X), scaled.points)


@pytest.mark.parametrize(
    ("X", "kwargs", "match"),
    [
        (np.ones(10), {}, "2-D array"),
        (np.full((10, 3), np.nan), {}, "NaN or inf"),
        (np.array([["a", "b"]] * 10), {}, "dtype"),
        (np.ones((1, 3)), {}, "at least 2 rows"),
        (np.random.default_rng(0).random((10, 3)), {"n_components": 4}, r"in \[1, 3\]"),
        (np.random.default_rng(0).random((10, 3)), {"n_components": 1.5}, "n_components"),
        (np.random.default_rng(0).random((10, 3)), {"random_state": -1}, "random_state"),
        (np.random.default_rng(0).random((10, 3)), {"whiten": True}, "Unknown parameter"),
        (np.random.default_rng(0).random((10, 3)), {"standardize": "yes"}, "standardize"),
    ],
)
def test_pca_input_validation(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_reducer("pca", X, **kwargs)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"The 'method' parameter must be one of \['pca', "):
        fit_reducer("lda", np.ones((10, 2)))
    assert registry.reducer_names()[:3] == ("pca", "tsne", "umap")


def test_transform_checks_columns(blobs):
    reducer = fit_reducer("pca", blobs[0], n_components=2)
    with pytest.raises(ValueError, match="50 columns"):
        reducer.transform(np.ones((2, 49)))


# ---------------------------------------------------------------------------------- t-SNE/UMAP


@pytest.mark.parametrize("method", METHOD_PARAMS[1:])
def test_nonlinear_map_is_trustworthy(request, method, blobs):
    X, y_train, X_new, y_new = blobs
    reducer = _fitted(request, method, blobs)
    assert reducer.points.shape == (N_TRAIN, 2) and reducer.points.dtype == np.float32
    assert trustworthiness(X, reducer.points, n_neighbors=5) >= 0.9
    new = reducer.transform(X_new)
    assert new.shape == (len(X_new), 2) and new.dtype == np.float32
    assert _nearest_blob(reducer, y_train, new) == y_new.tolist()
    assert reducer.params["random_state"] == 0
    json.dumps(reducer.params)


def test_tsne_is_deterministic_and_records_params(fitted_tsne, blobs):
    short = {"n_iter": 100, "early_exaggeration_iter": 100}  # determinism needs no convergence
    a = fit_reducer("tsne", blobs[0], random_state=0, **short)
    b = fit_reducer("tsne", blobs[0], random_state=0, **short)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.transform(blobs[2]), b.transform(blobs[2]))
    other = fit_reducer("tsne", blobs[0], random_state=1, **short)
    assert not np.array_equal(other.points, a.points)
    p = fitted_tsne.params
    assert p["perplexity"] == 30.0 and p["n_jobs"] == 1 and p["initialization"] == "pca"
    assert p["neighbors"] == "exact" and p["negative_gradient_method"] == "bh"
    # transform must not shift the reference map (openTSNE re-centres it in place)
    before = np.array(fitted_tsne.model)
    fitted_tsne.transform(blobs[2])
    np.testing.assert_array_equal(np.array(fitted_tsne.model), before)


def test_tsne_adapts_perplexity_for_small_n():
    X, _ = make_blobs(n_samples=30, n_features=5, centers=2, random_state=0)
    reducer = fit_reducer("tsne", X, n_components=3, n_iter=50, early_exaggeration_iter=50)
    assert reducer.params["perplexity_requested"] == 30.0
    assert reducer.params["perplexity"] == pytest.approx(29 / 3)
    assert reducer.points.shape == (30, 3)
    assert reducer.transform(X[:2]).shape == (2, 3)


def test_tsne_validation():
    X = np.random.default_rng(0).random((9, 3))
    with pytest.raises(ValueError, match="at least 10 rows"):
        fit_reducer("tsne", X)
    X = np.random.default_rng(0).random((20, 3))
    with pytest.raises(ValueError, match=r"The 'n_components' parameter must be an int in \[1, 3"):
        fit_reducer("tsne", X, n_components=4)
    with pytest.raises(ValueError, match="perplexity"):
        fit_reducer("tsne", X, perplexity=0)


@pytest.mark.slow
def test_umap_is_deterministic_and_single_threaded(fitted_umap, blobs):
    again = fit_reducer("umap", blobs[0], random_state=0)
    np.testing.assert_array_equal(again.points, fitted_umap.points)
    np.testing.assert_array_equal(again.transform(blobs[2]), fitted_umap.transform(blobs[2]))
    assert fitted_umap.params["n_jobs"] == 1 and fitted_umap.params["transform_seed"] == 0
    assert fitted_umap.params["n_neighbors"] == 15
    assert fitted_umap.params["n_epochs_effective"] == 500
    with pytest.raises(ValueError, match="n_jobs"):
        fit_reducer("umap", blobs[0], random_state=0, n_jobs=2)
    small = fit_reducer("umap", blobs[0][:12], n_components=3, n_epochs=20)
    assert small.params["n_neighbors"] == 11 and small.params["n_neighbors_requested"] == 15
    assert small.points.shape == (12, 3)


def test_umap_import_keeps_tensorflow_out():
    if "tensorflow" in sys.modules:
        pytest.skip("TensorFlow already imported by another test in this process")
    reduce_mod._import_umap()
    assert "tensorflow" not in sys.modules
    assert "umap" in sys.modules


# -------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_save_load_round_trip(request, method, blobs, tmp_path):
    reducer = _fitted(request, method, blobs)
    hashes = save_reducer(reducer, tmp_path / "reducers")
    assert sorted(hashes) == sorted(reducer_files(method))
    for name, digest in hashes.items():
        assert hashlib.sha256((tmp_path / "reducers" / name).read_bytes()).hexdigest() == digest
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in (tmp_path / "reducers").iterdir()) == sorted(hashes)
    loaded = load_reducer(tmp_path / "reducers", method, hashes)
    assert loaded.method == method and loaded.n_components == reducer.n_components
    assert loaded.params == reducer.params and loaded.versions == reducer.versions
    np.testing.assert_array_equal(loaded.points, reducer.points)
    np.testing.assert_array_equal(loaded.transform(blobs[2]), reducer.transform(blobs[2]))


def test_save_load_round_trip_with_standardize(blobs, tmp_path):
    reducer = fit_reducer("pca", blobs[0], n_components=2, standardize=True)
    loaded = load_reducer(tmp_path, "pca", save_reducer(reducer, tmp_path))
    np.testing.assert_array_equal(loaded.transform(blobs[2]), reducer.transform(blobs[2]))
    assert loaded.scaler is not None


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_tampered_file_is_refused(request, method, blobs, tmp_path):
    reducer = _fitted(request, method, blobs)
    hashes = save_reducer(reducer, tmp_path)
    name = reducer_files(method)[-1]
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    found = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ReducerLoadError, match=name) as info:
        load_reducer(tmp_path, method, hashes)
    assert hashes[name] in str(info.value) and found in str(info.value)


def test_tampered_pickle_is_not_unpickled(fitted_tsne, tmp_path, monkeypatch):
    hashes = save_reducer(fitted_tsne, tmp_path)
    (tmp_path / "tsne.pkl").write_bytes(pickle.dumps("something else"))

    def boom(*args, **kwargs):
        raise AssertionError("unpickled before checking the hash")

    monkeypatch.setattr(reduce_mod.pickle, "loads", boom)
    with pytest.raises(ReducerLoadError, match="SHA-256 mismatch"):
        load_reducer(tmp_path, "tsne", hashes)


def test_missing_file_and_missing_hash(fitted_tsne, tmp_path):
    hashes = save_reducer(fitted_tsne, tmp_path)
    with pytest.raises(ReducerLoadError, match="no expected SHA-256 for tsne.pkl"):
        load_reducer(tmp_path, "tsne", {"tsne.npz": hashes["tsne.npz"]})
    (tmp_path / "tsne.pkl").unlink()
    with pytest.raises(ReducerLoadError, match=r"missing file .*tsne\.pkl.*python -m app reduce"):
        load_reducer(tmp_path, "tsne", hashes, run="demo")


def test_version_mismatch_is_refused(fitted_tsne, tmp_path, monkeypatch):
    hashes = save_reducer(fitted_tsne, tmp_path)
    installed = reduce_mod._library_versions()
    monkeypatch.setattr(
        reduce_mod, "_library_versions", lambda: {**installed, "openTSNE": "9.9.0"}
    )
    with pytest.raises(ReducerLoadError, match=r"openTSNE .* but 9\.9\.0 is installed"):
        load_reducer(tmp_path, "tsne", hashes)
    # a patch-level difference is fine
    major, minor = installed["openTSNE"].split(".")[:2]
    monkeypatch.setattr(
        reduce_mod, "_library_versions", lambda: {**installed, "openTSNE": f"{major}.{minor}.99"}
    )
    load_reducer(tmp_path, "tsne", hashes)


def test_unpicklable_file_gives_rerun_hint(fitted_tsne, tmp_path):
    hashes = save_reducer(fitted_tsne, tmp_path)
    garbage = b"\x80\x05not a pickle"
    (tmp_path / "tsne.pkl").write_bytes(garbage)
    hashes["tsne.pkl"] = hashlib.sha256(garbage).hexdigest()
    with pytest.raises(ReducerLoadError, match=r"could not load tsne\.pkl: .*python -m app reduce"):
        load_reducer(tmp_path, "tsne", hashes)


# ------------------------------------------------------------------------- StreamingProjector


def test_sparse_random_projection_shape_and_determinism():
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((5, 4, 4, 64)).astype(np.float32)  # (b, h, w, c) map
    a = StreamingProjector(4 * 4 * 64, n_components=32, random_state=0)
    b = StreamingProjector(4 * 4 * 64, n_components=32, random_state=0)
    c = StreamingProjector(4 * 4 * 64, n_components=32, random_state=1)
    out = a.partial_fit(batch).transform(batch)
    assert out.shape == (5, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out, b.transform(batch.reshape(5, -1)))
    assert not np.allclose(out, c.transform(batch))
    # row-at-a-time and chunked paths agree
    np.testing.assert_allclose(a.transform(batch[:1]), out[:1], rtol=1e-5, atol=1e-5)
    info = a.describe()
    json.dumps(info)
    assert info["method"] == "sparse_random" and info["density"] == pytest.approx(1 / 32)
    assert info["nnz"] == a._matrix.nnz and info["n_samples_seen"] == 5


def test_sparse_random_projection_preserves_distances():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4096)).astype(np.float32)
    proj = StreamingProjector(4096, n_components=1024, random_state=0)
    Y = np.vstack([proj.transform(X[:20]), proj.transform(X[20:])])
    ratio = pdist(Y) / pdist(X)
    assert ratio.min() >= 0.8 and ratio.max() <= 1.2
    assert abs(np.mean(ratio**2) - 1.0) < 0.05


def test_sparse_random_matrix_stays_sparse():
    proj = StreamingProjector(1_000_000, n_components=64, random_state=0)
    info = proj.describe()
    assert info["nnz"] == pytest.approx(1_000_000 * 64 / 1000, rel=0.05)
    assert info["matrix_bytes"] < 1_000_000  # a dense matrix would be 256 MB


def test_ipca_close_to_batch_pca():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((600, 6)) * np.array([10, 8, 6, 4, 3, 2])
    X = (latent @ rng.standard_normal((6, 64)) + 0.1 * rng.standard_normal((600, 64)))
    X = X.astype(np.float32)
    proj = StreamingProjector(64, n_components=8, method="ipca")
    with pytest.raises(RuntimeError, match="not fitted"):
        proj.transform(X[:5])
    for start in range(0, 600, 5):  # batches smaller than n_components are buffered at first
        proj.partial_fit(X[start : start + 5])
    out = proj.transform(X)
    assert out.shape == (600, 8) and out.dtype == np.float32
    pca = PCA(n_components=8).fit(X)
    np.testing.assert_allclose(
        proj._ipca.explained_variance_ratio_, pca.explained_variance_ratio_, atol=0.01
    )
    np.testing.assert_allclose(np.abs(out[:, :4]), np.abs(pca.transform(X)[:, :4]), atol=0.1)
    info = proj.describe()
    json.dumps(info)
    assert info["n_samples_fit"] == 600 and info["fitted"] is True


def test_projector_validation():
    with pytest.raises(ValueError, match="method"):
        StreamingProjector(10, n_components=2, method="svd")
    with pytest.raises(ValueError, match=r"n_components.*\[1, 10\]"):
        StreamingProjector(10, n_components=11)
    with pytest.raises(ValueError, match="random_state"):
        StreamingProjector(10, n_components=2, random_state=None)
    with pytest.raises(ValueError, match="sparse_random"):
        StreamingProjector(128 * 128 * 512, n_components=2048, method="ipca")
    proj = StreamingProjector(10, n_components=2)
    with pytest.raises(ValueError, match=r"shape \(b, 10\)"):
        proj.transform(np.ones((3, 11)))
    with pytest.raises(ValueError, match="finite"):
        proj.transform(np.full((3, 10), np.inf))
