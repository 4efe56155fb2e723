"""A tiny end-to-end train on generated scenes: the loss goes down and a model run is stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import artifacts
from app.data.base import Building, Scene
from app.data.dataset import TileDataset, write_dataset
from app.ml.train import TrainConfig, dice_loss, make_dataset, train


def _scenes(n: int = 6, size: int = 64):
    """Bright squares on dark noise: learnable in a few epochs."""
    for i in range(n):
        rng = np.random.default_rng(i)
        image = rng.integers(20, 70, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        buildings = []
        for j in range(3):
            x, y = (int(v) for v in rng.integers(4, size - 20, 2))
            w = int(rng.integers(8, 16))
            image[y:y + w, x:x + w] = (200, 190, 180)
            mask[y:y + w, x:x + w] = 1
            poly = ((x, y), (x + w, y), (x + w, y + w), (x, y + w))
            buildings.append(Building(f"s{i}-b{j}", poly))
        yield Scene(f"scene{i}", "test", image, mask, buildings, {"phase": "pre"})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "tiny"
    write_dataset(
        _scenes(), out, name="tiny", source="test", tile_size=32, seed=0,
        fractions=(0.5, 0.25, 0.25), progress=False,
    )
    return out


def test_augmentation_moves_image_and_mask_together(dataset: Path) -> None:
    data = TileDataset.open(dataset)
    images, masks = data.paths("train")
    ds = make_dataset(images, masks, batch_size=4, training=True, seed=3)
    for x, y in ds.take(2):
        bright = (x.numpy().mean(axis=-1) > 150).astype(np.float32)
        # Building pixels are the bright ones, wherever flips and rotations put them.
        assert np.mean(bright == y.numpy()[..., 0]) > 0.97


def test_augmentation_is_seeded(dataset: Path) -> None:
    data = TileDataset.open(dataset)
    images, masks = data.paths("train")
    a = next(iter(make_dataset(images, masks, batch_size=4, training=True, seed=1)))
    b = next(iter(make_dataset(images, masks, batch_size=4, training=True, seed=1)))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_dice_loss_bounds() -> None:
    y = np.zeros((1, 8, 8, 1), np.float32)
    y[0, :4] = 1
    assert float(dice_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(y, 1 - y)) > 0.9


def test_tiny_train_lowers_loss_and_stores_run(dataset: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=8, batch_size=4, patience=8, learning_rate=3e-3, seed=0)
    path, metrics = train(dataset, "tiny-run", cfg, store=tmp_path, verbose=0)
    manifest = artifacts.read_model_manifest("tiny-run", tmp_path)
    losses = [row["loss"] for row in manifest["history"]]
    assert losses[-1] < losses[0]
    assert set(metrics["test"]) >= {"precision", "recall", "f1", "iou"}
    assert manifest["split"]["counts"]["train"] > 0
    assert manifest["params"]["seed"] == 0 and manifest["preset"] == "light"
    # Groups never straddle splits.
    groups = manifest["split"]["groups"]
    assert not set(groups["train"]) & set(groups["val"])
    model = artifacts.load_model("tiny-run", tmp_path)
    assert model.get_layer("bottleneck") is not None


def test_bad_config_is_named(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'epochs' parameter must be an int >= 1"):
        train(dataset, "x", TrainConfig(epochs=0), store=tmp_path)
    with pytest.raises(ValueError, match="'crop' parameter"):
        train(dataset, "x", TrainConfig(crop=20), store=tmp_path)


def test_progress_shows_steps_of_a_total_and_the_budget(dataset: Path, tmp_path: Path,
                                                         capsys) -> None:
    """``progress=True`` (what ``python -m app train`` uses): a start line, then a bar per epoch
    with the epoch's steps done of their total and the time budget left."""
    cfg = TrainConfig(epochs=2, batch_size=4, patience=2, seed=0, max_minutes=30)
    train(dataset, "progress-run", cfg, store=tmp_path, progress=True)
    err = capsys.readouterr().err
    n_train = len(TileDataset.open(dataset).paths("train")[0])
    steps = -(-n_train // 4)
    assert f"up to 2 epochs of {steps} steps, time budget 30 min" in err
    for epoch in (1, 2):
        assert f"epoch {epoch}/2: 100%" in err and f" {steps}/{steps} [" in err
    assert "val_iou" in err and "of 30 min left" in err
