"""What the server can serve: ``/healthz``, the start-up check of ``serve`` and the page banner.

One function, :func:`check`, looks at the artifacts the dashboard would use (the default
embeddings run, the model run for it, the fitted reducers and the shared cache) and sorts what it
finds into *problems* (the server is not ready: ``/healthz`` answers 503) and *warnings* (it
serves, degraded: ``/healthz`` answers 200 with ``"status": "degraded"``):

- problems: no embeddings run; a run that cannot be read (manifest, ``tiles.parquet``,
  ``reduced/coords.parquet``, ``vectors.npy``); no model run; a model file that is missing, is not
  a Keras archive or whose SHA-256 differs from its manifest;
- warnings: the model's SHA-256 differs from the one the embeddings were made with (maps and
  vectors may not match the model's outputs); a reducer that cannot be loaded (new images cannot
  be placed on that map); a cache that fell back to a temp dir or to no cache at all, or an
  unreachable Redis.

It never imports TensorFlow (the model file is hashed, not loaded) and is cheap to call often:
file hashes are remembered per (path, size, mtime, inode) and a report is reused for
:data:`TTL_SECONDS`. :func:`preflight` is the thorough variant run once by ``serve`` before it
starts: it also unpickles each reducer with ``app.ml.reduce.load_reducer`` (hash-checked first).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

import app as app_pkg
from app import artifacts, config
from app.artifacts import ArtifactError
from app.fsutil import sha256_file
from app.ml import registry
from app.ml.reduce import ReducerLoadError, load_reducer, reducer_files
from app.web import runs

log = logging.getLogger(__name__)

bp = Blueprint("unet_lens_health", __name__)

#: A report is reused this long (``/healthz`` and the page banner may be hit often).
TTL_SECONDS = 2.0
REDIS_TTL_SECONDS = 5.0

_hashes: dict[str, tuple[tuple[int, int, int], str]] = {}
#: model run → ((size, mtime, inode, expected SHA-256), the SHA-256 verified): a model file
#: is re-hashed by ``artifacts.verify_model_file`` only when it or its manifest changed.
_verified: dict[str, tuple[tuple, str]] = {}
_hash_lock = threading.Lock()
_memo: dict[tuple, tuple[float, Report]] = {}
_memo_lock = threading.Lock()
_redis_state: dict[str, tuple[float, str | None]] = {}


@dataclass
class Report:
    """The outcome of :func:`check`: which runs, and what is wrong with them."""

    embeddings_run: str | None = None
    model_run: str | None = None
    model_sha256: str | None = None
    tiles: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reducers: dict[str, str] = field(default_factory=dict)  # method → "ok" or why not

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if self.problems:
            return "unavailable"
        return "degraded" if self.warnings else "ok"


# --------------------------------------------------------------------------- helpers


def tidy(message: str) -> str:
    """Shorten the configured roots in a message (``/srv/x/model_store/run`` → ``model_store/run``).

    A root is replaced only where it is a whole path: at the start of one (not inside
    ``/tmp/srv/x``) and ending at a separator or the path's end (not ``/srv/x-cache``), so
    other paths in the message (a cache fallback under /tmp) are quoted as they are.
    """
    roots = {
        str(config.MODEL_STORE): "model_store",
        str(runs.embeddings_root()): "embeddings",
        str(config.REPO_ROOT): ".",
    }
    for root, short in sorted(roots.items(), key=lambda kv: -len(kv[0])):
        root = root.rstrip("/\\")
        if not root:  # "/" would be every path
            continue
        pattern = re.compile(r"(?<![\w.~/\\-])" + re.escape(root) + r"(?:[/\\]|(?![\w~-]|\.\w))")
        message = pattern.sub(lambda m, s=short: s + ("/" if m.group(0)[-1] in "/\\" else ""),
                              message)
    return message


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, recomputed only when its size, mtime or inode changed."""
    key = _stat_key(path)
    with _hash_lock:
        cached = _hashes.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    sha = sha256_file(path)
    with _hash_lock:
        _hashes[str(path)] = (key, sha)
    return sha


def check_model(run_id: str) -> str:
    """The SHA-256 of a stored model after checking it, or ``ArtifactError`` saying why not.

    Cheap and TensorFlow-free: ``artifacts.verify_model_file`` hashes the file and compares it
    with the manifest (its result remembered per stat and expected hash), and the archive must be a zip holding Keras's ``config.json``.
    """
    expected = artifacts.read_model_manifest(run_id).get("files", {}).get("model.keras")
    path = artifacts.model_dir(run_id) / "model.keras"
    try:
        key = (*_stat_key(path), str(expected))
    except FileNotFoundError:
        key = None
    except OSError as exc:
        raise ArtifactError(f"model run {run_id!r}: cannot read {path} ({exc}).") from exc
    with _hash_lock:
        cached = _verified.get(run_id)
    if key is not None and cached is not None and cached[0] == key:
        found = cached[1]
    else:
        try:
            path, found = artifacts.verify_model_file(run_id)
        except OSError as exc:
            raise ArtifactError(f"model run {run_id!r}: cannot read {path} ({exc}).") from exc
        if key is not None:
            with _hash_lock:
                _verified[run_id] = (key, found)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"model run {run_id!r}: {path} is not a Keras archive ({exc}).") from exc
    if "config.json" not in names:
        raise ArtifactError(f"model run {run_id!r}: {path} is not a Keras archive (no config.json).")
    return found


def reducer_problem(run: artifacts.EmbeddingsRun, method: str, *, load: bool = False) -> str | None:
    """Why the run's fitted ``method`` reducer cannot be used, or None.

    Without ``load``: the files exist and match the manifest's SHA-256 (no unpickling). With
    ``load``: ``app.ml.reduce.load_reducer`` is run (hashes, format, library versions, unpickle).
    """
    info = run.manifest.get("reduce") or {}
    files = info.get("files") or {}
    expected = {name: files.get(f"reduced/reducers/{name}") for name in reducer_files(method)}
    hint = f"re-run `python -m app reduce {run.run_id}`"
    if load:
        try:
            load_reducer(run.reducer_dir(), method, expected, run=run.run_id)
        except (ReducerLoadError, OSError, ValueError) as exc:
            return str(exc)
        return None
    for name, sha in expected.items():
        path = run.reducer_dir() / name
        if not sha:
            return f"no expected SHA-256 for {name} (the manifest does not list it); {hint}"
        try:
            found = file_sha256(path)
        except FileNotFoundError:
            return f"missing file {path}; {hint}"
        except OSError as exc:
            return f"could not read {path}: {exc}; {hint}"
        if found != str(sha).strip().lower():
            return f"SHA-256 mismatch for {path}; the file was changed or corrupted; {hint}"
    return None


def _reduced_methods(run: artifacts.EmbeddingsRun) -> list[str]:
    params = (run.manifest.get("reduce") or {}).get("params") or {}
    methods = params.get("methods") or []
    return [m for m in methods if m in registry.REDUCERS]


def _redis_problem(url: str) -> str | None:
    """Why Redis at ``url`` does not answer (remembered for a few seconds), or None."""
    now = time.monotonic()
    cached = _redis_state.get(url)
    if cached is not None and now - cached[0] < REDIS_TTL_SECONDS:
        return cached[1]
    try:
        import redis  # an optional dependency, only with a Redis cache

        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
        problem = None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        problem = f"Redis cache at {_redact(url)} does not answer ({type(exc).__name__}); values are recomputed."
    _redis_state[url] = (now, problem)
    return problem


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def cache_info(flask_app: Any | None = None) -> dict[str, Any]:
    """The cache the app runs with (set by ``create_app``): type, and a warning if degraded."""
    flask_app = flask_app or (current_app._get_current_object() if current_app else None)
    info = dict((flask_app.config.get("UNET_LENS_CACHE") if flask_app else None) or {})
    if info.get("type") == "RedisCache" and info.get("url"):
        problem = _redis_problem(str(info["url"]))
        info["ok"] = problem is None
        if problem:
            info["warning"] = problem
    info.pop("url", None)
    return info


# --------------------------------------------------------------------------- the check


def check(*, load_reducers: bool = False, use_memo: bool = True) -> Report:
    """What the server would serve now (see the module docstring)."""
    app_id = id(current_app._get_current_object()) if current_app else None
    key = (str(runs.embeddings_root()), str(config.MODEL_STORE), runs.model_run(),
           runs.default_run_id(), load_reducers, app_id)
    now = time.monotonic()
    if use_memo:
        with _memo_lock:
            hit = _memo.get(key)
        if hit is not None and now - hit[0] < TTL_SECONDS:
            return hit[1]
    report = _check(load_reducers)
    report.problems = [tidy(m) for m in report.problems]
    report.warnings = [tidy(m) for m in report.warnings]
    report.reducers = {k: tidy(v) for k, v in report.reducers.items()}
    with _memo_lock:
        _memo.clear()
        _memo[key] = (now, report)
    return report


def _check(load_reducers: bool) -> Report:
    report = Report()
    root = runs.embeddings_root()
    run_id = runs.default_run_id()
    run = None
    if run_id is None:
        wanted = runs.wanted_run_id()
        report.problems.append(
            (f"embeddings run {wanted!r} is not in {root}. " if wanted else
             f"No embeddings run in {root}. ")
            + "Build the demo with `python -m app demo`, or embed and reduce a model run.")
    else:
        report.embeddings_run = run_id
        run = runs.get_run(run_id)
        if run is None:
            reason = runs.run_error(run_id) or f"embeddings run {run_id!r} cannot be opened."
            report.problems.append(reason)
        else:
            report.tiles = len(run.tiles)
            try:
                run.vectors  # noqa: B018 - memory-mapped; checks the header and shape
            except (ArtifactError, OSError, ValueError) as exc:
                report.problems.append(str(exc))

    model_run = runs.model_run_for(run)
    wanted_model = runs.model_run() or (run.model_run if run is not None else None)
    if model_run is None:
        report.problems.append(
            f"No model run {(wanted_model or config.DEMO_MODEL_RUN)!r} in {config.MODEL_STORE}. "
            "Train one with `python -m app train`, or start with `--model-run <id>`.")
    else:
        report.model_run = model_run
        try:
            report.model_sha256 = check_model(model_run)
        except ArtifactError as exc:
            report.problems.append(str(exc))
    if run is not None and report.model_sha256:
        expected = run.manifest.get("model_sha256")
        if model_run != run.model_run:
            report.warnings.append(
                f"Embeddings run {run.run_id!r} was made with model {run.model_run!r}; the "
                f"server runs model {model_run!r}, so maps and vectors may not match its outputs.")
        elif expected and expected != report.model_sha256:
            report.warnings.append(
                f"Embeddings run {run.run_id!r} was made with model {model_run!r} of SHA-256 "
                f"{str(expected)[:12]}…, but that model is now {report.model_sha256[:12]}…. "
                f"Maps and vectors may not match its outputs: re-run `python -m app embed`.")
    if run is not None:
        for method in _reduced_methods(run):
            problem = reducer_problem(run, method, load=load_reducers)
            report.reducers[method] = problem or "ok"
            if problem:
                report.warnings.append(
                    f"The {method} reducer cannot be loaded, so new images cannot be placed on "
                    f"that map: {problem}")
    if current_app:
        cache = cache_info()
        if cache.get("warning"):
            report.warnings.append(str(cache["warning"]))
    return report


def forget() -> None:
    """Drop remembered reports and file hashes (tests; after replacing files by hand)."""
    with _memo_lock:
        _memo.clear()
    with _hash_lock:
        _hashes.clear()
        _verified.clear()
    _redis_state.clear()


def tensorflow_info() -> str | dict[str, Any]:
    """TensorFlow's devices, only if TensorFlow is already imported ("not loaded" otherwise)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return "not loaded"
    try:
        gpus = tf.config.list_physical_devices("GPU")
        return {"version": str(tf.__version__), "gpu": bool(gpus), "gpus": len(gpus)}
    except Exception:  # noqa: BLE001 - being imported by another thread
        return "loading"


def preflight() -> Report:
    """The thorough check ``serve`` runs once before it starts (reducers are really loaded)."""
    return check(load_reducers=True, use_memo=False)


def describe(report: Report) -> list[str]:
    """Lines for a terminal: ``problem: ...`` / ``warning: ...``, or one ``ready: ...`` line."""
    lines = [f"problem: {m}" for m in report.problems]
    lines += [f"warning: {m}" for m in report.warnings]
    if not lines:
        lines.append(f"ready: embeddings run {report.embeddings_run}, model run "
                     f"{report.model_run} ({(report.model_sha256 or '')[:12]})")
    return lines


# --------------------------------------------------------------------------- /healthz


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Readiness as JSON: 200 when ready (``ok`` or ``degraded``), 503 with the reason when not."""
    report = check()
    body: dict[str, Any] = {
        "status": report.status,
        "ready": report.ready,
        "version": app_pkg.__version__,
        "model": {"run": report.model_run,
                  "sha256": report.model_sha256[:12] if report.model_sha256 else None},
        "embeddings": {"run": report.embeddings_run, "tiles": report.tiles},
        "reducers": report.reducers,
        "tensorflow": tensorflow_info(),
        "cache": cache_info(),
        "pid": os.getpid(),
        "problems": report.problems,
        "warnings": report.warnings,
    }
    if not report.ready:
        body["reason"] = "; ".join(report.problems)
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if report.ready else 503


__all__ = [
    "Report", "bp", "cache_info", "check", "check_model", "describe", "file_sha256", "forget",
    "healthz",
    "preflight", "reducer_problem", "tensorflow_info", "tidy",
]
