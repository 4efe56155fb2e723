from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import artifacts
from app.artifacts import ArtifactError
from app.ml.unet import build_unet


def _save(store: Path, run_id: str = "r1", seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_unet("light", input_size=None)
    path = artifacts.save_model_run(
        model, run_id, preset="light", input_size=32, dataset={"name": "t"}, split={},
        params={"seed": seed}, metrics={"test": {"iou": 0.5}},
        history=[{"epoch": 1, "loss": 1.0}], store=store,
    )
    return model, path


def test_model_round_trip(tmp_path: Path) -> None:
    model, path = _save(tmp_path)
    assert (path / "model.keras").is_file() and (path / "history.csv").is_file()
    manifest = artifacts.read_model_manifest("r1", tmp_path)
    assert manifest["preset"] == "light" and manifest["params"] == {"seed": 0}
    assert manifest["files"]["model.keras"] == artifacts.sha256_file(path / "model.keras")
    assert "keras" in manifest["versions"] and "tensorflow" in manifest["versions"]
    loaded = artifacts.load_model("r1", tmp_path)
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert artifacts.list_runs(tmp_path) == ["r1"]


def test_hash_mismatch_refused(tmp_path: Path) -> None:
    _, path = _save(tmp_path)
    data = bytearray((path / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.keras").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.keras has SHA-256 .* manifest expects"):
        artifacts.load_model("r1", tmp_path)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        artifacts.load_model("nope", tmp_path)
    _, path = _save(tmp_path)
    (path / "model.keras").unlink()
    with pytest.raises(ArtifactError, match="model.keras is missing"):
        artifacts.load_model("r1", tmp_path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifacts.read_model_manifest("r1", tmp_path)


def test_corrupt_model_archive_gives_clear_error(tmp_path: Path) -> None:
    _, path = _save(tmp_path)
    (path / "model.keras").write_bytes(b"not a zip")
    manifest = artifacts.read_model_manifest("r1", tmp_path)
    manifest["files"]["model.keras"] = artifacts.sha256_file(path / "model.keras")
    artifacts.write_json(path / "manifest.json", manifest)
    with pytest.raises(ArtifactError, match="could not load"):
        artifacts.load_model("r1", tmp_path)


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b", "", ".hidden", "x" * 200])
def test_run_ids_are_slugs(bad: str) -> None:
    with pytest.raises(ArtifactError, match="run id"):
        artifacts.validate_run_id(bad)


def test_failed_save_keeps_previous_run(tmp_path: Path, monkeypatch) -> None:
    _save(tmp_path, seed=0)
    before = artifacts.read_model_manifest("r1", tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifacts, "write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _save(tmp_path, seed=1)
    assert artifacts.read_model_manifest("r1", tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]
