"""Health that tells the truth, with real components: a real ``redis-server`` that the test stops
(and a TCP server that accepts and never answers, a hung Redis), a real Keras model whose file
is corrupt but whose manifest hash matches, and a real full disk (a small tmpfs).

``/healthz``, the page banner and ``serve --check`` must say what does not work; the app must
keep serving with short timeouts, one log line per kind of failure, and no files left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app import config
from app.fsutil import sha256_file
from app.ml import inference
from app.web import cache as web_cache
from app.web import health, runs
from app.web.cache import cache
from tests.serving import REPO, free_port, linked_run, redis_server, serve_env
from tests.webapp import built_app

RUN = "served-run"
DEMO_MODEL = REPO / "model_store" / config.DEMO_MODEL_RUN


@pytest.fixture()
def site(tmp_path: Path, monkeypatch) -> Path:
    """The demo model (a real Keras archive) and a fixture embeddings run made with it."""
    store = tmp_path / "models"
    shutil.copytree(DEMO_MODEL, store / config.DEMO_MODEL_RUN)
    linked_run(tmp_path / "emb", store, config.DEMO_MODEL_RUN, n=30, run_id=RUN)
    monkeypatch.setattr(config, "MODEL_STORE", store)
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", tmp_path / "emb")
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "cache")
    for var in ("UNET_LENS_MODEL_RUN", "UNET_LENS_EMBEDDINGS_RUN", "UNET_LENS_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    health.forget()
    inference.forget_services()
    yield tmp_path
    runs.configure()
    health.forget()
    inference.forget_services()


def _banner(client) -> str:
    return json.dumps(json.loads(client.get("/_dash-layout").data))


def _healthz(client) -> tuple[int, dict]:
    health.forget()  # no memoised report or probe: what is true now
    r = client.get("/healthz")
    return r.status_code, r.json


def _redis_config(url: str) -> dict:
    return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": url, "CACHE_KEY_PREFIX": "unet-lens:"}


# --------------------------------------------------------------------------- Redis


def test_redis_reachable_then_stopped_then_back(site: Path, monkeypatch, caplog) -> None:
    """A real redis-server: reachable in /healthz; stopped, /healthz and the banner say so, calls
    go to the local cache folder without touching Redis (one log line, no traceback); restarted
    on the same port, it is used again after the retry interval."""
    monkeypatch.setattr(web_cache, "REDIS_RETRY_SECONDS", 3600.0)  # no retry until we say so
    port = free_port()
    with redis_server(port) as url:
        app = built_app(cache_config=_redis_config(url))
        client = app.server.test_client()
        found = web_cache.backend(app.server)
        assert isinstance(found, web_cache.ResilientRedisCache)
        kwargs = found.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == web_cache.REDIS_TIMEOUT <= 1
        assert kwargs["socket_connect_timeout"] == web_cache.REDIS_TIMEOUT
        code, body = _healthz(client)
        assert code == 200 and body["status"] == "ok", body
        assert body["cache"]["type"] == "RedisCache" and body["cache"]["reachable"] is True
        with app.server.app_context():
            assert cache.set("before", 1)
        import redis

        assert redis.Redis.from_url(url).get("unet-lens:before") is not None
    # redis-server is stopped now
    with caplog.at_level(logging.INFO, logger="app.web.cache"), app.server.app_context():
        for i in range(20):
            cache.set(f"during-{i}", i)
            assert cache.get(f"during-{i}") == i  # from the local folder
    down = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(down) == 1 and not down[0].exc_info, [r.getMessage() for r in caplog.records]
    assert found.status()["reachable"] is False
    assert any((site / "cache").glob("*")), "the local cache folder was not used"
    code, body = _healthz(client)
    assert code == 200 and body["status"] == "degraded"
    (warning,) = [w for w in body["warnings"] if "Redis" in w]
    assert warning.startswith(f"Redis unreachable at {url} (ConnectionError")
    assert "results are not shared with other servers" in warning
    assert body["cache"]["ok"] is False and body["cache"]["reachable"] is False
    assert f"Redis unreachable at {url}" in _banner(client)
    # the pages still answer from the fallback
    assert client.get(f"/api/points?run={RUN}&method=pca&k=5").status_code == 200

    with redis_server(port):
        monkeypatch.setattr(web_cache, "REDIS_RETRY_SECONDS", 0.0)
        with caplog.at_level(logging.INFO, logger="app.web.cache"), app.server.app_context():
            assert cache.set("after", 2) and cache.get("after") == 2
            assert cache.get("during-3") == 3  # written while Redis was down: still found
        assert any("answers again" in r.getMessage() for r in caplog.records)
        code, body = _healthz(client)
        assert code == 200 and body["status"] == "ok" and body["cache"]["reachable"] is True


@contextlib.contextmanager
def hung_server() -> Iterator[tuple[str, list]]:
    """A TCP server that accepts connections and never answers (a hung Redis): its URL and
    the connections it accepted."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{srv.getsockname()[1]}/0", accepted
    finally:
        srv.close()
        for conn in accepted:
            conn.close()
        thread.join(5)


def test_a_hung_redis_costs_one_timeout_not_one_per_call(site: Path, caplog) -> None:
    """A Redis that accepts and never answers is tried once; the next calls use the local
    folder without opening another connection (no stall per cached call)."""
    with hung_server() as (url, accepted):
        app = built_app(cache_config=_redis_config(url))
        with caplog.at_level(logging.WARNING, logger="app.web.cache"), \
                app.server.app_context():
            for i in range(20):
                cache.set(f"k{i}", i)
                assert cache.get(f"k{i}") == i
        assert len(accepted) == 1, f"Redis was tried {len(accepted)} times"
        lines = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
        assert len(lines) == 1 and "TimeoutError" in lines[0], lines
        code, body = _healthz(app.server.test_client())
        assert code == 200 and body["status"] == "degraded"
        assert len(accepted) == 1  # /healthz reports the open breaker, it does not wait again


def test_serve_check_prints_redis_and_the_folders(site: Path) -> None:
    """``serve --check`` prints the model, cache (Redis reachability) and temp-folder lines."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = serve_env(site / "models", site / "emb", site / "cache", free_port(),
                    UNET_LENS_REDIS_URL=dead)
    out = subprocess.run([sys.executable, "-m", "app", "serve", "--check"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"warning: Redis unreachable at {dead} (ConnectionError" in out.stderr
    assert f"cache: Redis at {dead} does not answer" in out.stdout
    assert "\ntemp: " in out.stdout and "writable" in out.stdout
    assert "model: run demo-light, SHA-256" in out.stdout
    assert "ready: embeddings run served-run" in out.stdout and "degraded" in out.stdout
    with redis_server() as url:
        env["UNET_LENS_REDIS_URL"] = url
        out = subprocess.run([sys.executable, "-m", "app", "serve", "--check"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "warning:" not in out.stderr, out.stderr
    assert f"cache: Redis at {url} answers" in out.stdout


# --------------------------------------------------------------------------- the model


def _corrupt_but_hash_matches(store: Path, run_id: str) -> None:
    """Flip 64 bytes inside the weights of ``model.keras`` and rewrite the manifest's SHA-256
    (the archive's directory stays valid: only reading the weights fails, on their CRC)."""
    path = store / run_id / "model.keras"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    manifest_path = store / run_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.keras"] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))


def _warm_up(monkeypatch) -> None:
    monkeypatch.setattr(config, "WARM_UP", True)
    thread = runs.start_warm_up()
    assert thread is not None
    thread.join(600)
    assert not thread.is_alive()


def test_a_model_that_cannot_load_is_unavailable(site: Path, monkeypatch) -> None:
    """The hash matches, so only loading it shows it is broken: after the warm-up /healthz is
    503 "unavailable" with the reason, and the banner says so."""
    _corrupt_but_hash_matches(site / "models", config.DEMO_MODEL_RUN)
    # the embeddings were made "with" this file: no hash warning beside the problem
    manifest_path = site / "emb" / RUN / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model_sha256"] = sha256_file(site / "models" / config.DEMO_MODEL_RUN / "model.keras")
    manifest_path.write_text(json.dumps(manifest))
    app = built_app(cache_config={"CACHE_TYPE": "SimpleCache"})
    client = app.server.test_client()
    code, body = _healthz(client)
    assert code == 200 and body["model"]["state"] == "not loaded"  # the hash alone is fine
    _warm_up(monkeypatch)
    code, body = _healthz(client)
    assert code == 503 and body["status"] == "unavailable" and body["ready"] is False, body
    assert body["model"]["state"] == "failed"
    assert "Model run 'demo-light' cannot be loaded or run" in body["reason"]
    assert "CRC" in body["reason"]
    assert "Explain, Segment and Evaluate cannot work" in body["reason"]
    banner = _banner(client)
    assert "Not ready" in banner and "cannot be loaded or run" in banner
    assert "Traceback" not in json.dumps(body)


def test_a_working_model_is_proven_by_a_forward_pass(site: Path, monkeypatch) -> None:
    app = built_app(cache_config={"CACHE_TYPE": "SimpleCache"})
    _warm_up(monkeypatch)
    proof = runs.model_check(config.DEMO_MODEL_RUN)
    assert proof is not None and proof.state == "ok" and "forward pass" in proof.reason
    code, body = _healthz(app.server.test_client())
    assert code == 200 and body["status"] == "ok" and body["model"]["state"] == "ok", body


# --------------------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (root, where the platform allows it)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                    "test_faults covers an uncreatable cache folder")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_a_full_disk_is_reported_and_leaves_no_temp_files(site: Path, tmp_path: Path,
                                                          caplog) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        folder = disk / "cache"
        app = built_app(cache_config={"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(folder)})
        client = app.server.test_client()
        code, body = _healthz(client)
        assert code == 200 and body["status"] == "ok" and body["cache"]["ok"] is True, body
        filler = _fill(disk)
        big = np.zeros(64 * 1024, np.float32)  # 256 KB: never fits
        with caplog.at_level(logging.WARNING, logger="app.web.cache"), \
                app.server.app_context():
            for i in range(5):
                assert cache.set(f"big-{i}", big) is False
                assert cache.get(f"big-{i}") is None
            assert web_cache.write_problem(app.server) is not None
        assert not list(folder.glob("tmp*")), os.listdir(folder)
        lines = [r for r in caplog.records if "cannot be written" in r.getMessage()]
        assert len(lines) == 1 and not lines[0].exc_info
        code, body = _healthz(client)
        assert code == 200 and body["status"] == "degraded" and body["cache"]["ok"] is False
        (warning,) = [w for w in body["warnings"] if "Cache folder" in w]
        assert f"Cache folder {folder} cannot be written (No space left on device)" in warning
        assert "upload the image again" in warning
        assert "cannot be written (No space left on device)" in _banner(client)
        assert not list(folder.glob(".probe-*")) and not list(folder.glob("tmp*"))
        filler.unlink()
        with app.server.app_context():
            assert cache.set("small", 1) and cache.get("small") == 1
        code, body = _healthz(client)  # a write worked again: no longer degraded
        assert code == 200 and body["status"] == "ok", body


def test_tidy_replaces_whole_paths_only(monkeypatch, tmp_path: Path) -> None:
    """The cache-fallback warning was mangled: a root was replaced inside longer paths."""
    root = tmp_path / "app"
    monkeypatch.setattr(config, "REPO_ROOT", root)
    monkeypatch.setattr(config, "MODEL_STORE", root / "model_store")
    text = (f"Cache folder {root}/.cache cannot be written; using {root}-cache-0 and "
            f"{root}x/y, in {root}.")
    assert health.tidy(text) == (f"Cache folder ./.cache cannot be written; using {root}-cache-0 "
                                 f"and {root}x/y, in ..")
