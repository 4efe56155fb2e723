"""``python -m app export savedmodel|projector``: a SavedModel TF Serving can load (checked
against the Keras model) and TensorBoard Embedding Projector files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import config
from app.cli import main as cli
from app.export import SPRITE_MAX_SIDE, export_projector, sprite_layout
from tests.fixture_run import make_fixture_run
from tests.serving import tiny_model_run


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("export-models")
    return store, tiny_model_run(store)


@pytest.fixture(scope="module")
def saved(model_store, tmp_path_factory) -> Path:
    """The SavedModel, written through the CLI exactly as documented."""
    store, run_id = model_store
    out = tmp_path_factory.mktemp("export") / "unet" / "1"
    mp = pytest.MonkeyPatch()
    mp.setattr(config, "MODEL_STORE", store)
    try:
        assert cli(["export", "savedmodel", "--model-run", run_id, "--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def serving_fn(saved: Path):
    """The ``serving_default`` signature, loaded back as TF Serving would."""
    import tensorflow as tf

    return tf.saved_model.load(str(saved)).signatures["serving_default"]


@pytest.fixture(scope="module")
def keras_models(model_store) -> tuple:
    """(the stored Keras model, the same with the bottleneck as a second output)."""
    import keras

    from app import artifacts

    store, run_id = model_store
    model = artifacts.load_model(run_id, store)
    both = keras.Model(model.inputs, [model.get_layer("bottleneck").output, model.outputs[0]])
    return model, both


def test_savedmodel_has_the_documented_signature(saved: Path, serving_fn, model_store) -> None:
    import tensorflow as tf

    fn = serving_fn
    _, inputs = fn.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.float32 and inputs["image"].shape.as_list() == [None] * 3 + [3]
    outputs = fn.structured_outputs
    assert set(outputs) == {"mask", "bottleneck"}
    assert outputs["mask"].shape.as_list() == [None, None, None, 1]
    info = json.loads((saved / "assets.extra" / "unet_lens.json").read_text())
    assert info["model_run"] == model_store[1] and len(info["model_sha256"]) == 64
    assert (saved / "saved_model.pb").is_file() and (saved / "variables").is_dir()


def test_savedmodel_outputs_match_the_keras_model(serving_fn, keras_models) -> None:
    import tensorflow as tf

    fn = serving_fn
    _, both = keras_models
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 48, 3)).astype(np.float32)
    out = fn(image=tf.constant(x))
    bottleneck, mask = (np.asarray(t) for t in both([x], training=False))
    assert out["mask"].shape == (2, 64, 48, 1) and out["bottleneck"].shape == (2, 4, 3, 256)
    np.testing.assert_allclose(out["mask"].numpy(), mask, atol=1e-5)
    np.testing.assert_allclose(out["bottleneck"].numpy(), bottleneck, rtol=1e-4, atol=1e-4)
    assert float(out["mask"].numpy().min()) >= 0.0 and float(out["mask"].numpy().max()) <= 1.0


def test_savedmodel_pads_other_sizes_like_the_dashboard(serving_fn, keras_models) -> None:
    """A 37 x 40 image: reflect-padded to 48 x 48 like ``ModelService``, cropped back."""
    import tensorflow as tf

    from app.ml.inference import ModelService

    fn = serving_fn
    model, _ = keras_models
    x = np.random.default_rng(1).uniform(0, 255, (1, 37, 40, 3)).astype(np.float32)
    out = fn(image=tf.constant(x))
    assert out["mask"].shape == (1, 37, 40, 1) and out["bottleneck"].shape[1:3] == (3, 3)
    expected = ModelService(model=model).predict_tile(x[0])
    np.testing.assert_allclose(out["mask"].numpy()[0, ..., 0], expected, atol=1e-5)


def test_savedmodel_refuses_a_non_empty_out_and_a_corrupt_model(model_store, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    import shutil

    store, run_id = model_store
    monkeypatch.setattr(config, "MODEL_STORE", tmp_path / "store")
    shutil.copytree(store / run_id, tmp_path / "store" / run_id)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert cli(["export", "savedmodel", "--model-run", run_id, "--out",
                str(tmp_path / "busy")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").is_file()
    model = tmp_path / "store" / run_id / "model.keras"
    model.write_bytes(model.read_bytes()[:-100])
    assert cli(["export", "savedmodel", "--model-run", run_id, "--out",
                str(tmp_path / "out")]) == 2
    assert "SHA-256" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- projector


@pytest.fixture(scope="module")
def emb_root(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("projector-emb")
    return root, make_fixture_run(root, n=70, seed=2)


def test_projector_files(emb_root, tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    root, run_id = emb_root
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", root)
    out = tmp_path / "proj"
    assert cli(["export", "projector", "--run", run_id, "--out", str(out)]) == 0
    vectors = np.load(root / run_id / "vectors.npy")
    tiles = pd.read_parquet(root / run_id / "tiles.parquet")
    rows = (out / "vectors.tsv").read_text().splitlines()
    assert len(rows) == len(tiles) == 70
    assert all(len(r.split("\t")) == vectors.shape[1] for r in rows)
    np.testing.assert_allclose(np.loadtxt(out / "vectors.tsv", delimiter="\t"),
                               vectors.astype(np.float32), rtol=1e-5)
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert len(meta) == len(tiles) + 1
    header = meta[0].split("\t")
    assert header[0] == "tile_id" and "cluster" in header and "split" in header
    assert [m.split("\t")[0] for m in meta[1:]] == tiles["tile_id"].tolist()
    assert all(len(m.split("\t")) == len(header) for m in meta)
    grid, cell = sprite_layout(70, 64)
    with Image.open(out / "sprite.png") as sprite:
        assert sprite.size == (grid * cell, grid * cell) == (9 * 64, 9 * 64)
        first = np.asarray(sprite.convert("RGB"))[:cell, :cell]
    with Image.open(root / run_id / "thumbs" / f"{tiles['tile_id'].iat[0]}.jpg") as im:
        thumb = np.asarray(im.convert("RGB"))
    assert np.abs(first.astype(int) - thumb.astype(int)).mean() < 8
    config_text = (out / "projector_config.pbtxt").read_text()
    for needle in ('tensor_path: "vectors.tsv"', 'metadata_path: "metadata.tsv"',
                   'image_path: "sprite.png"', f"single_image_dim: {cell}",
                   "tensor_shape: 70", f"tensor_shape: {vectors.shape[1]}"):
        assert needle in config_text


def test_projector_metadata_cells_never_break_the_tsv(emb_root, tmp_path: Path) -> None:
    import shutil

    root, run_id = emb_root
    shutil.copytree(root / run_id, tmp_path / "emb" / run_id)
    tiles_path = tmp_path / "emb" / run_id / "tiles.parquet"
    tiles = pd.read_parquet(tiles_path)
    tiles.loc[0, "disaster"] = "a\tb\nc"
    tiles.loc[1, "iou"] = np.nan
    tiles.to_parquet(tiles_path, index=False)
    out = export_projector(run_id, tmp_path / "p", root=tmp_path / "emb", sprite=False)
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert len(meta) == len(tiles) + 1 and "a b c" in meta[1]
    assert not (out / "sprite.png").exists()
    assert "sprite" not in (out / "projector_config.pbtxt").read_text()


@pytest.mark.parametrize("n, thumb", [(1, 64), (70, 64), (10_000, 64), (100_000, 64)])
def test_sprite_fits_tensorboards_limit(n: int, thumb: int) -> None:
    grid, cell = sprite_layout(n, thumb)
    assert grid * grid >= n and grid * cell <= SPRITE_MAX_SIDE and cell <= thumb and cell >= 1


def test_projector_unknown_run_is_a_clean_cli_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", tmp_path)
    assert cli(["export", "projector", "--run", "../etc", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: A run id must be")
