from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import artifacts
from app.artifacts import ArtifactError
from app.ml.unet import build_unet
from tests.fixture_run import make_fixture_run


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


# --------------------------------------------------------------------------- embeddings writers


def test_writers_and_readers_share_one_path_table(tmp_path: Path) -> None:
    run_id = make_fixture_run(tmp_path, n=12, seed=0)  # built through the artifacts writers
    run = artifacts.EmbeddingsRun.open(run_id, tmp_path, check_model=False)
    tid = str(run.tiles["tile_id"].iat[0])
    for kind in artifacts.THUMB_KINDS:
        assert run.file_for(kind, tid) == run.path / artifacts.tile_file(kind, tid)
    assert run.manifest["files"] == artifacts.hash_files(run.path)
    files = run.manifest["reduce"]["files"]
    for name in (artifacts.COORDS_FILE, artifacts.SWEEP_FILE, artifacts.LABELS_FILE):
        key = artifacts.reduced_file(name)
        assert files[key] == artifacts.sha256_file(run.path / key)
    np.testing.assert_array_equal(run.vectors_float32(), np.asarray(run.vectors, np.float32))
    assert run.reduce_info()["chosen_k"] == run.sweep["chosen_k"]


def test_memo_computes_once_per_key(tmp_path: Path) -> None:
    run = artifacts.EmbeddingsRun(run_id="r", path=tmp_path, manifest={})
    calls = []
    assert run.memo("a", lambda: calls.append(1) or 41) == 41
    assert run.memo("a", lambda: calls.append(1) or 42) == 41 and calls == [1]
    with pytest.raises(ZeroDivisionError):
        run.memo("b", lambda: 1 / 0)
    assert run.memoized("a") and not run.memoized("b")  # a failure stores nothing
    run.forget("a")
    assert run.memo("a", lambda: 43) == 43
    with pytest.raises(ArtifactError, match="no maps yet"):
        run.reduce_info()


def test_verified_files_are_refused_when_changed(tmp_path: Path) -> None:
    hashes = artifacts.write_files(tmp_path / "d", {"a.bin": b"one", "b.bin": b"two"})
    blobs = artifacts.read_verified_files(tmp_path / "d", hashes, ("a.bin", "b.bin"), "hint")
    assert blobs == {"a.bin": b"one", "b.bin": b"two"}
    (tmp_path / "d" / "b.bin").write_bytes(b"TWO")
    with pytest.raises(ArtifactError, match=r"SHA-256 mismatch .*b\.bin.*; hint"):
        artifacts.read_verified_files(tmp_path / "d", hashes, ("a.bin", "b.bin"), "hint")
    with pytest.raises(ArtifactError, match="does not list it"):
        artifacts.read_verified_files(tmp_path / "d", {}, ("a.bin",), "hint")
    with pytest.raises(ArtifactError, match="missing file"):
        artifacts.read_verified_files(tmp_path / "d", {"c.bin": "0" * 64}, ("c.bin",), "hint")
