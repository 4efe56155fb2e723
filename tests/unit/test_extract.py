"""app.ml.extract: one forward pass → vectors, masks, per-tile metrics and thumbnails."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from app import config
from app.data.base import Scene
from app.data.dataset import TileDataset, write_dataset
from app.ml import extract
from app.ml.extract import (
    REPRESENTATIONS,
    extract_embeddings,
    feature_model,
    pool_activations,
    representation_dims,
    tile_labels,
)

TILE = 64
N_LABELLED = 16  # 2 pre/post pairs of 128² scenes → 4 tiles each
N_TILES = N_LABELLED + 4  # + one unlabelled scene


def make_dataset(path: Path) -> TileDataset:
    """2 synthetic pre/post pairs (with masks) + 1 scene without labels, cut into 64² tiles."""
    from app.data.synthetic import generate_pair

    scenes = [s for i in range(2) for s in generate_pair(0, i, size=128)]
    unlabelled = generate_pair(0, 2, size=128)[0]
    scenes.append(Scene(
        scene_id="nolabels_pre_disaster", source="synthetic", image=unlabelled.image, mask=None,
        meta={"phase": "pre", "disaster": "none", "disaster_type": "none"}, group="nolabels",
    ))
    write_dataset(scenes, path, name="tiny", source="synthetic", tile_size=TILE, progress=False)
    return TileDataset.open(path)


def make_model(seed: int = 0):
    import keras

    from app.ml.unet import build_unet

    keras.utils.set_random_seed(seed)
    return build_unet("light", None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> TileDataset:
    return make_dataset(tmp_path_factory.mktemp("ds") / "tiny")


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def images(dataset: TileDataset) -> np.ndarray:
    return np.stack([dataset.image(t) for t in dataset.ids()]).astype(np.float32)


@pytest.fixture(scope="module")
def bottleneck_acts(model, images) -> np.ndarray:
    """Bottleneck activations from a separate single-output model (the reference)."""
    import keras

    return keras.Model(model.inputs, model.get_layer("bottleneck").output).predict(
        images, verbose=0)


@pytest.fixture(scope="module")
def gap_run(dataset: TileDataset, model, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("gap")
    summary = extract_embeddings(model, dataset, out, batch_size=8, progress=False)
    return out, summary


def test_feature_model_is_one_pass_and_matches_separate_models(
    model, images, bottleneck_acts
) -> None:
    n_layers, outputs = len(model.layers), list(model.outputs)
    fm = feature_model(model, "bottleneck")
    acts, prob = fm.predict(images[:6], verbose=0)
    np.testing.assert_allclose(acts, bottleneck_acts[:6], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prob, model.predict(images[:6], verbose=0), rtol=1e-5, atol=1e-6)
    # The extraction path (a tf.function over the same model) gives the same arrays.
    acts2, prob2 = extract._forward(fm, images[:6])
    np.testing.assert_allclose(acts2, acts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prob2, prob, rtol=1e-5, atol=1e-6)
    assert len(model.layers) == n_layers and list(model.outputs) == outputs  # not mutated
    with pytest.raises(ValueError, match=r"named layers \['enc1'.*'bottleneck'.*Got 'nope'"):
        feature_model(model, "nope")


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_representations_shape_values_and_determinism(
    representation: str, dataset: TileDataset, model, bottleneck_acts, tmp_path: Path
) -> None:
    kw = dict(representation=representation, batch_size=8, projection_dims=64, progress=False)
    s1 = extract_embeddings(model, dataset, tmp_path / "a", **kw)
    extract_embeddings(model, dataset, tmp_path / "b", **kw)
    v1 = np.load(tmp_path / "a" / "vectors.npy", allow_pickle=False)
    v2 = np.load(tmp_path / "b" / "vectors.npy", allow_pickle=False)
    c = 256  # light preset bottleneck channels
    expected_dims = {"gap": c, "avgmax": 2 * c, "spp": 21 * c, "flatten": 64}[representation]
    assert v1.shape == (N_TILES, expected_dims) and v1.dtype == np.float16
    assert s1["dims"] == expected_dims == representation_dims(representation, (4, 4, c), 64)
    assert s1["activation_shape"] == [TILE // 16, TILE // 16, c]
    np.testing.assert_array_equal(v1, v2)  # deterministic (seeded projection, fixed batches)

    # Same values as pooling the activations of a separate layer model.
    ref = pool_activations(bottleneck_acts, representation)
    if representation == "flatten":
        from app.ml.reduce import StreamingProjector

        ref = StreamingProjector(ref.shape[1], 64, random_state=0).transform(ref)
        assert s1["params"]["projector"]["input_dim"] == 4 * 4 * c
        assert s1["params"]["projector"]["random_state"] == 0
    np.testing.assert_allclose(v1.astype(np.float32), ref, rtol=2e-3,
                               atol=2e-3 * float(np.abs(ref).max()))


def test_flatten_kept_raw_when_small_and_ipca_projection(dataset, model, tmp_path) -> None:
    small = extract_embeddings(model, dataset, tmp_path / "raw", layer="bottleneck",
                               representation="flatten", projection_dims=8192, progress=False)
    assert small["dims"] == 4 * 4 * 256 and small["params"]["projection"] == "none"
    ipca = extract_embeddings(model, dataset, tmp_path / "ipca", representation="flatten",
                              projection="ipca", projection_dims=8, batch_size=8,
                              dtype="float32", progress=False)
    v = np.load(tmp_path / "ipca" / "vectors.npy", allow_pickle=False)
    assert v.shape == (N_TILES, 8) and np.isfinite(v).all() and ipca["dims"] == 8
    assert ipca["params"]["projector"]["method"] == "ipca"
    assert ipca["params"]["projector"]["fitted"] is True


def test_spp_uses_adaptive_bins() -> None:
    acts = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    v = pool_activations(acts, "spp")
    assert v.shape == (2, 21 * 3)
    np.testing.assert_allclose(v[:, :3], acts.mean(axis=(1, 2)))
    np.testing.assert_allclose(v[:, 3:6], acts[:, :2, :2].mean(axis=(1, 2)))  # 2×2, cell (0,0)
    np.testing.assert_allclose(v[:, 12:15], acts[:, 2:, 2:].mean(axis=(1, 2)))  # cell (1,1)
    np.testing.assert_allclose(v[:, -3:], acts[:, 3, 3])  # 4×4, last cell
    tiny = pool_activations(acts[:, :2, :2], "spp")  # 2×2 map: 4×4 cells overlap, no error
    assert tiny.shape == (2, 63) and np.isfinite(tiny).all()
    np.testing.assert_allclose(pool_activations(acts, "avgmax")[:, 3:], acts.max(axis=(1, 2)))


def test_per_tile_metrics_match_numpy(gap_run, dataset: TileDataset, model, images) -> None:
    out, summary = gap_run
    table = pd.read_parquet(out / "tiles.parquet")
    assert table["tile_id"].tolist() == dataset.ids() and summary["n_tiles"] == N_TILES
    prob = model.predict(images, verbose=0)[..., 0]
    for i, tid in enumerate(table["tile_id"]):
        row = table.iloc[i]
        pred = prob[i] >= 0.5
        assert row["pred_fraction"] == pytest.approx(pred.mean())
        assert row["pred_building_count"] == ndimage.label(pred, structure=np.ones((3, 3)))[1]
        truth = dataset.mask(tid)
        if truth is None:
            assert np.isnan(row[["precision", "recall", "f1", "iou", "true_fraction"]]
                            .astype(float)).all()
            continue
        t = truth > 0
        tp, fp, fn = (pred & t).sum(), (pred & ~t).sum(), (~pred & t).sum()
        assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn)
        assert row["true_fraction"] == pytest.approx(t.mean())
        if tp + fp + fn == 0:
            assert row["iou"] == row["f1"] == 1.0
        else:
            assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
            assert row["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
            assert row["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
            assert row["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 0.0)
    # The dataset's own columns are carried over.
    for col in ("scene_id", "group", "split", "source", "x", "y", "size", "phase", "disaster",
                "disaster_type", "building_count", "dmg_no_damage", "dmg_destroyed"):
        assert col in table.columns
    assert table["has_mask"].sum() == N_LABELLED


def test_thumbnails_and_images_for_every_tile(gap_run, dataset: TileDataset) -> None:
    out, _ = gap_run
    for tid in dataset.ids():
        has_mask = dataset.mask(tid) is not None
        for name in (f"{tid}.jpg", f"{tid}_overlay.jpg"):
            im = Image.open(out / "thumbs" / name)
            assert im.format == "JPEG" and im.size == (128, 128) and im.mode == "RGB"
        for kind in ("pred",) + (("true",) if has_mask else ()):
            im = Image.open(out / "thumbs" / f"{tid}_{kind}.png")
            assert im.size == (128, 128) and im.mode == "L"
            assert set(np.unique(np.asarray(im))) <= {0, 255}
        assert (out / "thumbs" / f"{tid}_true.png").exists() == has_mask
        full = Image.open(out / "images" / f"{tid}.jpg")
        assert full.format == "JPEG" and full.size == (TILE, TILE)
        diff = np.abs(np.asarray(full, dtype=np.int16) - dataset.image(tid).astype(np.int16))
        assert diff.mean() < 6  # JPEG q90 of the same tile


def test_overlay_matches_metrics_error_overlay() -> None:
    from app.ml.metrics import error_overlay

    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    truth, pred = rng.random((32, 32)) > 0.6, rng.random((32, 32)) > 0.5
    np.testing.assert_array_equal(
        extract.overlay_image(thumb, truth, pred),
        error_overlay(thumb, truth, pred, alpha=extract.OVERLAY_ALPHA),
    )
    square = np.zeros((32, 32), bool)
    square[8:16, 8:16] = True
    outline = extract.overlay_image(thumb, None, square)
    assert (outline[8, 8] == extract.PRED_COLOUR).all() and (outline[12, 12] == thumb[12, 12]).all()
    assert (outline[20, 20] == thumb[20, 20]).all()


def test_tile_labels() -> None:
    table = pd.DataFrame({
        "true_fraction": [0.0, 0.5, np.nan, 0.02],
        "has_mask": [True, True, False, True],
        "phase": ["pre", "post", None, "post"],
        "dmg_no_damage": [0, 3, 0, 1],
        "dmg_minor_damage": [0, 0, 0, 0],
        "dmg_major_damage": [0, 0, 0, 0],
        "dmg_destroyed": [0, 4, 0, 1],
        "dmg_un_classified": [0, 0, 0, 0],
    })
    labels = tile_labels(table)
    assert labels["has_building"].tolist() == ["no-building", "building", "unknown", "building"]
    assert labels["phase"].tolist() == ["pre", "post", "unknown", "post"]
    assert labels["dominant_damage"].tolist() == ["none", "destroyed", "none", "no-damage"]


def test_bad_arguments(dataset: TileDataset, model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="representation"):
        extract_embeddings(model, dataset, tmp_path, representation="pca", progress=False)
    with pytest.raises(ValueError, match="not in the dataset"):
        extract_embeddings(model, dataset, tmp_path, tile_ids=["nope"], progress=False)
    from app.ml.unet import build_unet

    with pytest.raises(ValueError, match="takes 128x128 tiles"):
        extract_embeddings(build_unet("light", 128), dataset, tmp_path, progress=False)


@pytest.mark.realdata
def test_real_xbd_tiles(tmp_path: Path) -> None:
    root = config.SHARED_DATA / "xbd"
    if not (root / "images").is_dir():
        pytest.skip(f"real xBD data not found at {root}")
    try:
        from app.data.xbd import iter_xbd
    except ImportError:
        pytest.skip("app.data.xbd.iter_xbd is not available")
    scenes = list(itertools.islice(iter_xbd(root), 2))
    if len(scenes) < 2:
        pytest.skip(f"fewer than 2 readable xBD scenes in {root}")
    ds = TileDataset.open(write_dataset(scenes, tmp_path / "xbd", name="xbd2", source="xbd",
                                       tile_size=256, progress=False))
    ids = ds.ids()[::4]  # 8 of the 32 tiles keep this short on 2 cores
    summary = extract_embeddings(make_model(0), ds, tmp_path / "emb", tile_ids=ids,
                                 representation="avgmax", batch_size=4, progress=False)
    table = pd.read_parquet(tmp_path / "emb" / "tiles.parquet")
    vectors = np.load(tmp_path / "emb" / "vectors.npy", allow_pickle=False)
    assert vectors.shape == (len(ids), 512) and np.isfinite(vectors).all()
    assert summary["activation_shape"] == [16, 16, 256]
    assert table["disaster"].notna().all() and set(table["phase"]) <= {"pre", "post"}
    assert table["true_fraction"].between(0, 1).all() and table["iou"].between(0, 1).all()
    assert all((tmp_path / "emb" / "thumbs" / f"{t}_overlay.jpg").is_file() for t in ids)
