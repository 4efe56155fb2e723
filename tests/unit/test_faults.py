"""Broken artifacts and environments: a clear message at start-up (``serve --check`` prints what
``serve`` prints), ``/healthz`` 503 or degraded, a page banner saying what is missing, and never
a traceback or a wrong picture in the browser."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from app import config
from app.cli import main as cli
from app.web import health, runs
from tests.serving import fake_model_run, linked_run
from tests.webapp import built_app

MODEL, RUN = "fake-model", "served-run"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store and an embeddings root that belong together (built once)."""
    base = tmp_path_factory.mktemp("faults")
    fake_model_run(base / "models", MODEL)
    linked_run(base / "emb", base / "models", MODEL, n=40, run_id=RUN)
    return base


@pytest.fixture()
def site(pristine: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh copy of the stores per test (tests break them), configured as the defaults."""
    shutil.copytree(pristine, tmp_path / "site")
    base = tmp_path / "site"
    monkeypatch.setattr(config, "MODEL_STORE", base / "models")
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", base / "emb")
    for var in ("UNET_LENS_MODEL_RUN", "UNET_LENS_EMBEDDINGS_RUN", "UNET_LENS_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    health.forget()
    yield base
    runs.configure()
    health.forget()


@pytest.fixture()
def client_for(site: Path, tmp_path: Path) -> Callable:
    def make(cache_config: dict | None = None):
        health.forget()
        app = built_app(cache_config=cache_config or {"CACHE_TYPE": "SimpleCache"})
        return app.server.test_client()

    return make


def _banner(client) -> str:
    layout = json.dumps(json.loads(client.get("/_dash-layout").data))
    assert "health-banner" in layout, "no banner in the page shell"
    return layout


def _no_traceback(*bodies: bytes) -> None:
    for body in bodies:
        assert b"Traceback" not in body and b'File "' not in body


def _check(capsys) -> tuple[int, str]:
    code = cli(["serve", "--check"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --------------------------------------------------------------------------- healthy baseline


def test_the_intact_site_is_ready(site, client_for, capsys) -> None:
    client = client_for()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok", r.json
    assert "health-banner" not in client.get("/_dash-layout").data.decode()
    code, out = _check(capsys)
    assert code == 0 and "ready: embeddings run served-run, model run fake-model" in out
    # every check is printed at start, not only "ready:"
    assert "\nmodel: run fake-model, SHA-256" in "\n" + out and "\ncache: folder " in out
    assert "\ntemp: " in out and "problem:" not in out and "warning:" not in out


# --------------------------------------------------------------------------- model file


def test_missing_model_file(site, client_for, capsys) -> None:
    (site / "models" / MODEL / "model.keras").unlink()
    client = client_for()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json["ready"] is False
    assert "model.keras is missing" in r.json["reason"]
    assert "model.keras is missing" in _banner(client)
    code, out = _check(capsys)
    assert code == 1 and "problem: model run 'fake-model': model_store/fake-model/model.keras is missing." in out
    seg = client.post("/api/segment", data=b"x" * 100, content_type="image/png")
    assert seg.status_code == 400  # the image is checked first; it is not one
    _no_traceback(r.data, seg.data, client.get("/").data)


def test_corrupt_model_file(site, client_for, capsys) -> None:
    from tests.serving import png_bytes

    path = site / "models" / MODEL / "model.keras"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    client = client_for()
    r = client.get("/healthz")
    assert r.status_code == 503 and "SHA-256" in r.json["reason"] and "corrupted" in r.json["reason"]
    seg = client.post("/api/segment", data=png_bytes(), content_type="image/png")
    assert seg.status_code == 503 and "cannot be used" in seg.json["error"]
    assert "SHA-256" in seg.json["error"]
    code, out = _check(capsys)
    assert code == 1 and "problem: model run 'fake-model'" in out and "SHA-256" in out
    _no_traceback(r.data, seg.data)


def test_model_file_that_is_not_a_keras_archive(site, client_for) -> None:
    from app.fsutil import sha256_file

    path = site / "models" / MODEL / "model.keras"
    path.write_bytes(b"this is not a zip")
    manifest_path = site / "models" / MODEL / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.keras"] = sha256_file(path)  # the hash matches: content is wrong
    manifest_path.write_text(json.dumps(manifest))
    r = client_for().get("/healthz")
    assert r.status_code == 503 and "is not a Keras archive" in r.json["reason"]


def test_no_model_run_at_all(site, client_for) -> None:
    shutil.rmtree(site / "models" / MODEL)
    r = client_for().get("/healthz")
    assert r.status_code == 503 and "No model run 'fake-model'" in r.json["reason"]


# --------------------------------------------------------------------------- embeddings


def test_embeddings_made_with_another_model_hash(site, client_for, capsys) -> None:
    manifest_path = site / "emb" / RUN / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model_sha256"] = "ab" * 32
    manifest_path.write_text(json.dumps(manifest))
    client = client_for()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "degraded"
    (warning,) = r.json["warnings"]
    assert "SHA-256 abababababab" in warning and "re-run `python -m app embed`" in warning
    assert "re-run `python -m app embed`" in _banner(client)
    code, out = _check(capsys)
    assert code == 0 and "warning: Embeddings run 'served-run' was made with model" in out
    # the maps need no network: they are still served
    assert client.get(f"/api/points?run={RUN}&method=pca").status_code == 200


@pytest.mark.parametrize("name", ["tiles.parquet", "reduced/coords.parquet"])
def test_malformed_parquet(site, client_for, capsys, name: str) -> None:
    tiles = pd.read_parquet(site / "emb" / RUN / "tiles.parquet")
    (site / "emb" / RUN / name).write_bytes(b"PAR1 this is not parquet PAR1")
    client = client_for()
    r = client.get("/healthz")
    assert r.status_code == 503 and "is not a readable Parquet table" in r.json["reason"]
    assert name.split("/")[-1] in r.json["reason"]
    assert "is not a readable Parquet table" in _banner(client)
    tid = tiles["tile_id"].iat[0]
    # never a wrong picture: nothing of the broken run is served
    assert client.get(f"/img/{RUN}/thumb/{tid}").status_code == 404
    assert client.get(f"/api/points?run={RUN}&method=pca").status_code == 404
    page = client.get("/")
    assert page.status_code == 200
    code, out = _check(capsys)
    assert code == 1 and "problem: embeddings run 'served-run'" in out
    _no_traceback(r.data, page.data)


def test_no_embeddings_run(site, client_for, capsys) -> None:
    shutil.rmtree(site / "emb" / RUN)
    r = client_for().get("/healthz")
    assert r.status_code == 503 and "No embeddings run" in r.json["reason"]
    assert "python -m app demo" in r.json["reason"]
    code, out = _check(capsys)
    assert code == 1 and "problem: No embeddings run in embeddings" in out


def test_reducer_that_cannot_be_loaded(site, client_for, capsys) -> None:
    path = site / "emb" / RUN / "reduced" / "reducers" / "pca.npz"
    path.write_bytes(path.read_bytes()[:-10])
    client = client_for()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "degraded"
    assert "SHA-256 mismatch" in r.json["reducers"]["pca"]
    assert any("pca reducer cannot be loaded" in w for w in r.json["warnings"])
    code, out = _check(capsys)  # the thorough check really loads it
    assert code == 0 and "warning: The pca reducer cannot be loaded" in out
    assert "python -m app reduce served-run" in out
    # maps come from coords.parquet, not the reducer: still served
    assert client.get(f"/api/points?run={RUN}&method=pca").status_code == 200


def test_reducer_missing_from_the_manifest_is_reported_by_the_real_loader(site) -> None:
    run = runs.get_run(RUN) or pytest.fail("run should open")
    (site / "emb" / RUN / "reduced" / "reducers" / "pca.npz").unlink()
    assert "missing file" in health.reducer_problem(run, "pca", load=True)
    assert "missing file" in health.reducer_problem(run, "pca", load=False)


# --------------------------------------------------------------------------- cache folder


def _file_in_the_way(tmp_path: Path) -> Path:
    """A cache folder that cannot be created, even by root: its parent is a regular file."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return blocker / "cache"


def test_unwritable_cache_dir_falls_back_to_a_temp_dir(site, client_for, tmp_path, monkeypatch,
                                                       caplog) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(config, "CACHE_DIR", _file_in_the_way(tmp_path))
    from app.web.cache import cache, default_config

    with caplog.at_level(logging.WARNING, logger="app.web.server"):
        client = client_for(default_config())
    assert any("cannot be written" in rec.getMessage() for rec in caplog.records)
    server = client.application
    info = server.config["UNET_LENS_CACHE"]
    assert info["type"] == "FileSystemCache" and info["ok"] is False
    assert info["dir"].startswith(str(tmp_path / "tmp"))
    with server.app_context():
        cache.set("probe", 42)
        assert cache.get("probe") == 42
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "degraded"
    assert r.json["cache"]["ok"] is False and "cannot be written" in r.json["warnings"][0]


def test_no_writable_folder_at_all_means_no_cache(site, client_for, tmp_path, monkeypatch,
                                                  caplog) -> None:
    import tempfile

    blocked = _file_in_the_way(tmp_path)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(blocked.parent))
    with caplog.at_level(logging.WARNING, logger="app.web.server"):
        client = client_for({"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(blocked)})
    info = client.application.config["UNET_LENS_CACHE"]
    assert info["type"] == "NullCache" and "without a cache" in info["warning"]
    assert any("without a cache" in rec.getMessage() for rec in caplog.records)
    # the pages still work, only uncached
    assert client.get(f"/api/points?run={RUN}&method=pca&k=7").status_code == 200
    assert client.get("/healthz").json["status"] == "degraded"


def test_a_shared_fallback_folder_is_refused(site, client_for, tmp_path, monkeypatch) -> None:
    """The temp fallback is used only when it is this user's private folder: the cache
    unpickles what it finds, so a folder others can write to is never trusted."""
    import os
    import tempfile

    shared = tmp_path / "shared-tmp"
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(shared))
    planted = shared / f"unet-lens-cache-{os.getuid()}"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    client = client_for({"CACHE_TYPE": "FileSystemCache",
                         "CACHE_DIR": str(_file_in_the_way(tmp_path))})
    assert client.application.config["UNET_LENS_CACHE"]["type"] == "NullCache"


def test_unreachable_redis_is_degraded_not_down(site, client_for, monkeypatch) -> None:
    from tests.serving import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = client_for({"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": url,
                         "CACHE_KEY_PREFIX": "unet-lens:"})
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "degraded"
    assert r.json["cache"]["ok"] is False and r.json["cache"]["reachable"] is False
    assert r.json["warnings"][0].startswith(f"Redis unreachable at {url} (")
    assert "results are not shared" in r.json["warnings"][0]
    # memoized values fall back to computing them
    assert client.get(f"/api/points?run={RUN}&method=pca&k=7").status_code == 200


# --------------------------------------------------------------------------- unexpected errors


def test_unexpected_exception_is_a_plain_internal_error(site, client_for, monkeypatch,
                                                        caplog) -> None:
    from app.web import api, images

    client = client_for()

    def boom(*_a, **_k):
        raise RuntimeError("secret-detail at /srv/private/path")

    monkeypatch.setattr(api, "points_payload", boom)
    with caplog.at_level(logging.ERROR, logger="app.web.server"):
        r = client.get(f"/api/points?run={RUN}&method=pca&k=3")
    assert r.status_code == 500 and r.json == {"error": "internal error"}
    # logged with where it failed (the innermost frames), never the whole payload
    assert any("in boom" in rec.getMessage() for rec in caplog.records)
    monkeypatch.setattr(images.runs, "get_run", boom)
    page = client.get(f"/img/{RUN}/thumb/x", headers={"Accept": "text/html"})
    assert page.status_code == 500 and page.data == b"internal error\n"
    assert page.mimetype == "text/plain"
    bad_callback = client.post("/_dash-update-component", json={
        "output": "nope.children", "outputs": {"id": "nope", "property": "children"},
        "inputs": [], "changedPropIds": []})
    assert bad_callback.status_code == 500 and bad_callback.json == {"error": "internal error"}
    for resp in (r, page, bad_callback):
        assert b"secret-detail" not in resp.data and b"nope.children" not in resp.data
        _no_traceback(resp.data)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
