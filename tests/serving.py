"""Helpers for the serving tests (API, faults, security, gunicorn): stores with a model run and an
embeddings run that belong together, free loopback ports, a server process that is always
stopped, and a file-open spy.

- :func:`fake_model_run` writes a model run that passes every check that does not load the
  network (a zip holding ``config.json`` whose SHA-256 the manifest lists): no TensorFlow.
- :func:`tiny_model_run` saves a real, untrained ``build_unet("light")`` with
  ``artifacts.save_model_run`` (imports TensorFlow).
- :func:`linked_run` writes the fixture embeddings run (``tests.fixture_run``) made "with" a model
  run (its ``model_run`` / ``model_sha256``) and a real, hash-listed PCA reducer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app import artifacts
from app.fsutil import sha256_file
from tests.fixture_run import make_fixture_run

REPO = Path(__file__).resolve().parent.parent


def fake_model_run(store: Path, run_id: str = "fake-model") -> str:
    """A model run whose file is a small zip with ``config.json`` (not loadable by Keras)."""
    path = Path(store) / run_id
    path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path / "model.keras", "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Functional"}))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3"}))
    manifest = {
        "format": artifacts.MODEL_FORMAT, "run_id": run_id, "created": artifacts.now_iso(),
        "preset": "light", "input_size": None, "files": {"model.keras": sha256_file(path / "model.keras")},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return run_id


def tiny_model_run(store: Path, run_id: str = "tiny-model") -> str:
    """A real, untrained light U-Net saved as a model run (imports TensorFlow)."""
    import keras

    from app.ml.unet import build_unet

    keras.utils.set_random_seed(0)
    artifacts.save_model_run(
        build_unet("light"), run_id, preset="light", input_size=None,
        dataset={"name": "none"}, split={}, params={}, metrics={}, history=[], store=Path(store),
    )
    return run_id


def linked_run(root: Path, store: Path, model_run: str, *, n: int = 60,
               run_id: str = "served-run", seed: int = 0) -> str:
    """The fixture embeddings run, made "with" ``model_run`` and with a hash-listed PCA reducer."""
    from app.ml.reduce import fit_reducer, save_reducer

    make_fixture_run(Path(root), n=n, seed=seed, run_id=run_id)
    path = Path(root) / run_id
    manifest = json.loads((path / "manifest.json").read_text())
    vectors = np.load(path / "vectors.npy").astype(np.float32)
    hashes = save_reducer(fit_reducer("pca", vectors, random_state=0),
                          path / "reduced" / "reducers")
    manifest["model_run"] = model_run
    manifest["model_sha256"] = sha256_file(Path(store) / model_run / "model.keras")
    manifest["reduce"]["params"]["methods"] = ["pca"]
    manifest["reduce"]["files"] = {f"reduced/reducers/{k}": v for k, v in hashes.items()}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run_id


def png_bytes(height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    """A small RGB PNG with a few bright "roofs"."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(40, 120, (height, width, 3)).astype(np.uint8)
    img[8:20, 10:30] = 220
    img[28:40, 36:56] = 210
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of a GET, HTTP errors included (never raises for 4xx/5xx)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def wait_for(url: str, timeout: float = 90.0, status: int | None = 200,
             proc: subprocess.Popen | None = None) -> tuple[int, bytes]:
    """Poll ``url`` until it answers (with ``status`` when given); fail after ``timeout``."""
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before {url} answered")
        try:
            code, body, _ = get(url, timeout=5)
            if status is None or code == status:
                return code, body
            last = code
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer {status} within {timeout} s (last: {last})")


@contextlib.contextmanager
def server_process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Start ``argv`` in its own process group (output to ``log``) and always stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def serve_env(model_store: Path, embeddings: Path, cache: Path, port: int,
              **extra: str) -> dict[str, str]:
    """The environment of a served test instance (loopback, its own stores and cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNET_LENS_")}
    env.update({
        "UNET_LENS_HOST": "127.0.0.1", "UNET_LENS_PORT": str(port),
        "UNET_LENS_MODEL_STORE": str(model_store), "UNET_LENS_EMBEDDINGS": str(embeddings),
        "UNET_LENS_CACHE_DIR": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(REPO), **extra,
    })
    return env


def child_pids(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


# --------------------------------------------------------------------------- file-open spy

_recording: list[list[tuple[str, str, int]]] = []
_hook_lock = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recording:
        path, mode, flags = (list(args) + [None, None, None])[:3]
        if isinstance(path, bytes | str | os.PathLike):
            for sink in _recording:
                sink.append((os.fsdecode(path), str(mode or ""), int(flags or 0)))


@contextlib.contextmanager
def opened_files() -> Iterator[list[tuple[str, str, int]]]:
    """Every file opened (path, mode, flags) while inside the block, via an audit hook."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
    sink: list[tuple[str, str, int]] = []
    _recording.append(sink)
    try:
        yield sink
    finally:
        _recording.remove(sink)


def writes(opened: list[tuple[str, str, int]]) -> list[str]:
    """The paths in ``opened`` that were opened for writing or creating."""
    flags_w = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    return [p for p, mode, flags in opened
            if any(c in mode for c in "wax+") or (flags & flags_w)]


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A throw-away ``redis-server`` on a free loopback port (or ``port``, to restart one that
    was stopped), with no persistence: its URL.

    Skips the test when the binary is missing, but fails under CI, which must install it.
    """
    import shutil

    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI must install it)")
        pytest.skip("redis-server is not installed")
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server did not accept connections on port {port} within 10 s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
