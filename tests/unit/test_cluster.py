"""K-means sweep, silhouettes and cluster/label agreement against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_samples, silhouette_score

from app.ml.cluster import (
    SweepResult,
    agreement_table,
    cluster_label_agreement,
    kmeans_sweep,
    nearest_to_centroid,
    silhouette_per_sample,
    validate_k,
)
from app.ml.neighbours import nearest_rows


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(n_samples=300, n_features=8, centers=4, cluster_std=1.0, random_state=0)


@pytest.fixture(scope="module")
def sweep(blobs) -> SweepResult:
    return kmeans_sweep(blobs[0], range(2, 7), random_state=0)


# ------------------------------------------------------------------------------------ validate_k


@pytest.mark.parametrize("k", [2, 7, 50, np.int64(3)])
def test_validate_k_accepts(k):
    assert validate_k(k) == int(k) and type(validate_k(k)) is int


@pytest.mark.parametrize("k", [0, 1, 51, 2.0, "3", True, None])
def test_validate_k_rejects(k):
    with pytest.raises(ValueError, match=r"^The 'k' parameter must be an int in \[2, 50\]\. Got "):
        validate_k(k)


def test_validate_k_message_and_bounds():
    with pytest.raises(ValueError) as info:
        validate_k(0)
    assert str(info.value) == "The 'k' parameter must be an int in [2, 50]. Got 0 instead."
    assert validate_k(5, low=5, high=5) == 5
    with pytest.raises(ValueError, match=r"\[3, 4\]"):
        validate_k(2, low=3, high=4)


# ---------------------------------------------------------------------------------- kmeans_sweep


def test_sweep_matches_sklearn(blobs, sweep):
    X = blobs[0]
    assert sweep.k == [2, 3, 4, 5, 6]
    for i, k in enumerate(sweep.k):
        ref = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(X)
        assert sweep.inertia[i] == pytest.approx(ref.inertia_)
        np.testing.assert_array_equal(sweep.labels[k], ref.labels_)
        np.testing.assert_allclose(sweep.centroids[k], ref.cluster_centers_)
        assert sweep.labels[k].dtype == np.int32
        assert sweep.silhouette[i] == pytest.approx(silhouette_score(X, ref.labels_))
    assert sweep.best_k == sweep.k[int(np.argmax(sweep.silhouette))] == 4
    assert sweep.params["algorithm"] == "kmeans"
    assert sweep.params["silhouette_sample_size"] is None
    assert sweep.inertia == sorted(sweep.inertia, reverse=True)  # the elbow decreases


def test_sweep_n_init_and_to_dict(blobs, sweep):
    X = blobs[0]
    five = kmeans_sweep(X, [3], random_state=1, n_init=5)
    ref = KMeans(n_clusters=3, random_state=1, n_init=5).fit(X)
    assert five.inertia[0] == pytest.approx(ref.inertia_)
    np.testing.assert_array_equal(five.labels[3], ref.labels_)
    summary = sweep.to_dict()
    text = json.dumps(summary)
    assert "labels" not in summary and "centroids" not in summary
    assert json.loads(text)["best_k"] == 4
    assert summary["sizes"]["4"] == np.bincount(sweep.labels[4]).tolist()
    assert sum(summary["sizes"]["2"]) == 300


def test_sweep_silhouette_on_a_seeded_sample(blobs):
    X = blobs[0]
    sampled = kmeans_sweep(X, [3, 4], random_state=0, silhouette_sample=100)
    assert sampled.params["silhouette_sample_size"] == 100
    for i, k in enumerate(sampled.k):
        expected = silhouette_score(X, sampled.labels[k], sample_size=100, random_state=0)
        assert sampled.silhouette[i] == pytest.approx(expected)
    # the per-point variant draws the same sample, so its mean is the sweep's value
    per_point = silhouette_per_sample(X, sampled.labels[4], sample=100, random_state=0)
    assert np.isnan(per_point).sum() == 200
    assert np.nanmean(per_point) == pytest.approx(sampled.silhouette[1])


def test_sweep_uses_minibatch_above_threshold(blobs):
    sweep = kmeans_sweep(blobs[0], [4], random_state=0, minibatch_threshold=100)
    assert sweep.params["algorithm"] == "minibatch_kmeans"
    assert sweep.labels[4].shape == (300,) and sweep.silhouette[0] > 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_values": [1, 2]}, r"The 'k' parameter must be an int in \[2, 50\]"),
        ({"k_values": []}, "non-empty"),
        ({"k_values": 4}, "k_values"),
        ({"n_init": 0}, "n_init"),
        ({"silhouette_sample": 1}, "silhouette_sample"),
        ({"random_state": -3}, "random_state"),
    ],
)
def test_sweep_validation(blobs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans_sweep(blobs[0], **kwargs)


def test_sweep_rejects_k_not_below_n():
    with pytest.raises(ValueError, match="n_samples - 1"):
        kmeans_sweep(np.random.default_rng(0).random((5, 2)), [2, 5])
    with pytest.raises(ValueError, match="NaN"):
        kmeans_sweep(np.full((10, 2), np.nan))


# ---------------------------------------------------------------------------------- silhouettes


def test_silhouette_per_sample_matches_sklearn(blobs, sweep):
    X = blobs[0]
    values = silhouette_per_sample(X, sweep.labels[4])
    np.testing.assert_allclose(values, silhouette_samples(X, sweep.labels[4]))
    with pytest.raises(ValueError, match="2 to n_samples - 1 clusters"):
        silhouette_per_sample(X, np.zeros(300, dtype=int))
    with pytest.raises(ValueError, match="length 300"):
        silhouette_per_sample(X, np.zeros(10, dtype=int))


# ---------------------------------------------------------------------------------- agreement


def test_agreement_perfect_with_string_truth():
    truth = np.array(["building", "no-building", "building", "no-building"] * 25)
    labels = np.where(truth == "building", 7, 3)  # cluster ids are arbitrary
    agree = cluster_label_agreement(labels, truth)
    for key in ("precision", "recall", "accuracy", "ari", "nmi"):
        assert agree[key] == pytest.approx(1.0), key
    assert agree["mapping"] == {3: "no-building", 7: "building"}
    json.dumps(agree)


def test_agreement_random_is_low():
    rng = np.random.default_rng(0)
    truth = rng.choice(["no-damage", "minor", "major", "destroyed"], size=2000)
    labels = rng.integers(0, 4, size=2000)
    agree = cluster_label_agreement(labels, truth)
    assert abs(agree["ari"]) < 0.02 and agree["nmi"] < 0.02
    assert agree["accuracy"] < 0.35 and agree["precision"] < 0.35 and agree["recall"] < 0.5


def test_agreement_majority_mapping_and_unmapped_class():
    # clusters 0 and 1 both map to "a"; class "b" gets no cluster -> precision/recall 0 for it
    labels = np.array([0, 0, 0, 1, 1, 1])
    truth = np.array(["a", "a", "b", "a", "a", "b"])
    agree = cluster_label_agreement(labels, truth)
    assert agree["mapping"] == {0: "a", 1: "a"}
    assert agree["accuracy"] == pytest.approx(4 / 6)
    assert agree["precision"] == pytest.approx((4 / 6 + 0) / 2)
    assert agree["recall"] == pytest.approx((1 + 0) / 2)


def test_agreement_skips_missing_and_excluded():
    labels = np.array([0, 0, 1, 1, 1, 0])
    truth = np.array(["x", "x", "y", "y", None, "unknown"], dtype=object)
    agree = cluster_label_agreement(labels, truth, exclude=("unknown",))
    assert agree["n_samples"] == 4 and agree["n_excluded"] == 2
    assert agree["ari"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="length 6"):
        cluster_label_agreement(labels, truth[:3])


def test_agreement_table(blobs, sweep):
    X, y = blobs
    table = agreement_table(sweep, y.astype(str), X)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == [
        "k", "silhouette", "inertia", "precision", "recall", "accuracy", "ari", "nmi",
    ]
    assert table["k"].tolist() == sweep.k
    row = table.set_index("k").loc[4]
    assert row["ari"] == pytest.approx(1.0) and row["precision"] == pytest.approx(1.0)
    assert row["silhouette"] == pytest.approx(sweep.silhouette[2])
    with pytest.raises(ValueError, match="300 rows"):
        agreement_table(sweep, y, X[:10])


# ---------------------------------------------------------------------------------- centroids


def test_nearest_to_centroid(blobs, sweep):
    X = blobs[0]
    labels, centroids = sweep.labels[4], sweep.centroids[4]
    idx = nearest_to_centroid(X, labels, centroids, cluster=2, n=8)
    assert idx.shape == (8,) and (labels[idx] == 2).all()
    members = np.flatnonzero(labels == 2)
    dist = np.linalg.norm(X[members] - centroids[2], axis=1)
    np.testing.assert_array_equal(idx, members[np.argsort(dist)[:8]])
    everything = nearest_to_centroid(X, labels, centroids, cluster=2, n=10_000)
    assert len(everything) == len(members)
    with pytest.raises(ValueError, match=r"The 'cluster' parameter must be an int in \[0, 3\]"):
        nearest_to_centroid(X, labels, centroids, cluster=4)


# ------------------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_rows_match_brute_force(metric):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(200, 16)).astype(np.float32)
    X = data.astype(np.float64)
    if metric == "cosine":
        unit = X / np.linalg.norm(X, axis=1, keepdims=True)
        score, sign = unit @ unit[17], -1
    else:
        score, sign = np.linalg.norm(X - X[17], axis=1), 1
    order = np.argsort(sign * score, kind="stable")
    # A stored row's neighbours (itself left out), with and without precomputed norms...
    sq = np.einsum("ij,ij->i", data, data)
    for kwargs in ({}, {"norms": np.sqrt(sq), "sqnorms": sq}):
        got = nearest_rows(data, data[17], 8, metric=metric, exclude=17, **kwargs)
        expected = [int(i) for i in order if i != 17][:8]
        assert [r for r, _ in got] == expected
        np.testing.assert_allclose([s for _, s in got], score[expected], rtol=1e-4, atol=1e-4)
    # ... and an outside query's (it may be its own nearest).
    got = nearest_rows(data, data[17], 5, metric=metric)
    assert got[0][0] == 17 and len(got) == 5
    with pytest.raises(ValueError, match="metric"):
        nearest_rows(data, data[0], 3, metric="manhattan")


def test_nearest_rows_are_clamped_to_the_data():
    data = np.eye(3, dtype=np.float32)
    assert len(nearest_rows(data, data[0], 10, exclude=0)) == 2
    assert len(nearest_rows(data, data[0], 10)) == 3
    assert nearest_rows(data[:1], data[0], 5, exclude=0) == []
    assert nearest_rows(data, np.zeros(3, np.float32), 2)[0][1] == 0.0  # zero query: no NaN
