"""What the server can serve: ``/healthz``, the start-up check of ``serve`` and the page banner.

One function, :func:`check`, looks at the artifacts the dashboard would use (the default
embeddings run, the model run for it, the fitted reducers and the shared cache) and sorts what it
finds into *problems* (the server is not ready: ``/healthz`` answers 503) and *warnings* (it
serves, degraded: ``/healthz`` answers 200 with ``"status": "degraded"``):

- problems: no embeddings run; a run that cannot be read (manifest, ``tiles.parquet``,
  ``reduced/coords.parquet``, ``vectors.npy``); no model run; a model file that is missing, is not
  a Keras archive or whose SHA-256 differs from its manifest; a model that this process's
  warm-up could not load or run (``app.web.runs.model_check``: a tiny forward pass);
- warnings, each saying what will not work: the model's SHA-256 differs from the one the
  embeddings were made with (maps and vectors may not match the model's outputs); a reducer that
  cannot be loaded (new images cannot be placed on that map); a cache that fell back to a temp dir
  or to no cache at all; an unreachable Redis; a cache or temp folder that cannot be written (a
  real write-and-delete probe, remembered for :data:`PROBE_TTL_SECONDS`).

It never imports TensorFlow itself (the model file is hashed; the warm-up thread loads and runs
it, and this reports what that found) and is cheap to call often: file hashes are remembered per
(path, size, mtime, inode) and a report is reused for :data:`TTL_SECONDS`. :func:`preflight` is
the thorough variant run once by ``serve`` before it starts: it also unpickles each reducer with
``app.ml.reduce.load_reducer`` (hash-checked first) and checks the cache ``serve`` will use.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
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
from app.web import cache as web_cache
from app.web import runs

log = logging.getLogger(__name__)

bp = Blueprint("unet_lens_health", __name__)

#: A report is reused this long (``/healthz`` and the page banner may be hit often).
TTL_SECONDS = 2.0
#: A folder's write probe and a Redis PING are reused this long.
PROBE_TTL_SECONDS = 5.0

_hashes: dict[str, tuple[tuple[int, int, int], str]] = {}
#: model run → ((size, mtime, inode, expected SHA-256), the SHA-256 verified): a model file
#: is re-hashed by ``artifacts.verify_model_file`` only when it or its manifest changed.
_verified: dict[str, tuple[tuple, str]] = {}
_hash_lock = threading.Lock()
_memo: dict[tuple, tuple[float, Report]] = {}
_memo_lock = threading.Lock()
_probes: dict[str, tuple[float, str | None]] = {}


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
    #: What this process's warm-up found: "ok", "loading", "failed" or "not loaded".
    model_state: str = "not loaded"
    cache: dict[str, Any] = field(default_factory=dict)  # ``cache_info()``

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
    manifest = artifacts.read_model_manifest(run_id)
    name = artifacts.model_file_name(manifest, run_id)
    expected = manifest.get("files", {}).get(name)
    path = artifacts.model_dir(run_id) / name
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
    if name == artifacts.MODEL_FILE_H5:
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ArtifactError(f"model run {run_id!r}: {path} is not an HDF5 file.")
        return found
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


def _memo_probe(key: str, probe: Any) -> str | None:
    """``probe()`` (why something does not work, or None), reused for a few seconds."""
    now = time.monotonic()
    cached = _probes.get(key)
    if cached is not None and now - cached[0] < PROBE_TTL_SECONDS:
        return cached[1]
    problem = probe()
    _probes[key] = (now, problem)
    return problem


def folder_problem(folder: str | Path) -> str | None:
    """Why a file cannot be written to and deleted from ``folder`` now (memoised), or None."""
    return _memo_probe(f"dir:{folder}", lambda: web_cache.write_probe(Path(folder)))


def temp_dir_warning() -> str | None:
    """What will not work when the temp folder cannot be written, or None."""
    folder = tempfile.gettempdir()
    problem = folder_problem(folder)
    if problem is None:
        return None
    return (f"Temp folder {folder} cannot be written ({problem}): libraries that need temp "
            "files (TensorFlow, numba, Python's tempfile) may fail.")


def cache_dir_warning(folder: str, problem: str) -> str:
    """What will not work when the cache folder cannot be written."""
    return (f"Cache folder {folder} cannot be written ({problem}): uploads cannot be reopened "
            "(Grad-CAM of an upload and its download ask to upload the image again) and "
            "computed values are not kept.")


def redis_warning(url: str, error: str | None, fallback: str) -> str:
    """What will not work while Redis does not answer."""
    shared = ("results are not shared between workers; values are recomputed"
              if fallback.startswith("no cache") else
              "results are not shared with other servers (this one uses " + fallback + ")")
    return (f"Redis unreachable at {web_cache.redact(url)} ({error or 'no answer'}): {shared}; "
            f"retried every {web_cache.REDIS_RETRY_SECONDS:g} s.")


def cache_info(flask_app: Any | None = None) -> dict[str, Any]:
    """The cache the app runs with (set by ``create_app``): type, whether it works now, and
    ``warnings`` saying what does not (Redis reachability, the folder's write probe)."""
    flask_app = flask_app or (current_app._get_current_object() if current_app else None)
    info = dict((flask_app.config.get("UNET_LENS_CACHE") if flask_app else None) or {})
    found = web_cache.backend(flask_app) if flask_app else None
    warnings = [info.pop("warning")] if info.get("warning") else []
    if isinstance(found, web_cache.ResilientRedisCache):
        error = _memo_probe(f"redis:{id(found)}", found.ping)
        status = found.status()
        info["reachable"] = error is None
        info["fallback"] = status["fallback"]
        if error is not None:
            info["ok"] = False
            warnings.append(redis_warning(status["url"], error, status["fallback"]))
        else:
            info["ok"] = True
        local_dir = info.get("local_dir")
        if error is not None and local_dir:
            problem = folder_problem(local_dir)
            if problem:
                warnings.append(cache_dir_warning(local_dir, problem))
    elif isinstance(found, web_cache.SafeFileSystemCache):
        problem = folder_problem(found.path) or found.problem(within=PROBE_TTL_SECONDS * 6)
        if problem:
            info["ok"] = False
            warnings.append(cache_dir_warning(found.path, problem))
    return _finish_info(info, warnings)


def _finish_info(info: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """``info`` as ``/healthz`` shows it: the URL without its password, the warnings listed."""
    if info.get("url"):
        info["url"] = web_cache.redact(str(info["url"]))
    info.pop("local_dir", None)
    if warnings:
        info["warnings"] = warnings
    return info


def planned_cache_info() -> dict[str, Any]:
    """What :func:`cache_info` will say once ``serve``'s workers bind the cache (no app)."""
    from app.web.server import usable_cache_config  # server imports this module

    _, info = usable_cache_config(web_cache.default_config(), quiet=True)
    warnings = [info.pop("warning")] if info.get("warning") else []
    if info.get("type") == "RedisCache" and info.get("url"):
        url = str(info["url"])

        def ping() -> str | None:
            try:
                import redis  # an optional dependency, only with a Redis cache

                t = web_cache.REDIS_TIMEOUT
                redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t).ping()
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
                return f"{type(exc).__name__}: {exc}"
            return None

        error = ping()
        info["ok"] = info["reachable"] = error is None
        if error is not None:
            local = info.get("local_dir")
            fallback = f"the local cache folder {local}" if local else \
                "no cache (values are recomputed)"
            warnings.append(redis_warning(url, error, fallback))
    return _finish_info(info, warnings)


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
    if report.cache.get("warnings"):
        report.cache["warnings"] = [tidy(m) for m in report.cache["warnings"]]
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
        proof = runs.model_check(model_run)
        report.model_state = proof.state if proof is not None else "not loaded"
        if proof is not None and proof.state == "failed" and report.model_sha256:
            report.problems.append(
                f"Model run {model_run!r} cannot be loaded or run: {proof.reason} "
                "Explain, Segment and Evaluate cannot work; replace the model file "
                "(`python -m app train`, or `python -m app demo`).")
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
    report.cache = cache_info() if current_app else planned_cache_info()
    report.warnings.extend(report.cache.get("warnings", []))
    temp = temp_dir_warning()
    if temp:
        report.warnings.append(temp)
    return report


def forget() -> None:
    """Drop remembered reports and file hashes (tests; after replacing files by hand)."""
    with _memo_lock:
        _memo.clear()
    with _hash_lock:
        _hashes.clear()
        _verified.clear()
    _probes.clear()


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
    """The thorough check ``serve`` runs once before it starts: reducers are really loaded,
    Redis is pinged and the cache and temp folders get a real write (outside any app)."""
    return check(load_reducers=True, use_memo=False)


def describe(report: Report) -> list[str]:
    """Lines for a terminal: ``problem: ...`` and ``warning: ...``, then one line per check
    (``model:``, ``cache:``, ``temp:``), then ``ready: ...`` when the server can serve."""
    lines = [f"problem: {m}" for m in report.problems]
    lines += [f"warning: {m}" for m in report.warnings]
    if report.model_run and report.model_sha256:
        proof = ("each worker loads it and runs a tiny forward pass at warm-up (/healthz "
                 "answers 503 if that fails)" if config.WARM_UP else
                 "warm-up is off (UNET_LENS_WARM_UP=0): /healthz checks the file's hash only")
        lines.append(f"model: run {report.model_run}, SHA-256 {report.model_sha256[:12]} "
                     f"matches its manifest; {proof}")
    lines.append(f"cache: {_cache_line(report.cache)}")
    folder = tempfile.gettempdir()
    temp = folder_problem(folder)
    lines.append(f"temp: {folder} " + (f"cannot be written ({temp})" if temp else "writable"))
    if report.ready:
        state = (f"degraded ({len(report.warnings)} warning"
                 f"{'s' if len(report.warnings) != 1 else ''} above)" if report.warnings else "ok")
        lines.append(f"ready: embeddings run {report.embeddings_run}, model run "
                     f"{report.model_run} ({(report.model_sha256 or '')[:12]}), {state}")
    return lines


def _cache_line(info: dict[str, Any]) -> str:
    kind = info.get("type")
    if kind == "RedisCache":
        where = f"Redis at {info.get('url', '?')}"
        if info.get("reachable"):
            return f"{where} answers (shared by every worker)"
        return f"{where} does not answer: see the warning above"
    if kind == "FileSystemCache":
        state = "writable" if info.get("ok") else "see the warning above"
        return f"folder {info.get('dir')} ({state})"
    if kind == "NullCache":
        return "none (values are recomputed): see the warning above"
    return str(kind or "not configured")


# --------------------------------------------------------------------------- /healthz


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Readiness as JSON: 200 when ready (``ok`` or ``degraded``), 503 with the reason when not."""
    report = check()
    body: dict[str, Any] = {
        "status": report.status,
        "ready": report.ready,
        "version": app_pkg.__version__,
        "model": {"run": report.model_run, "state": report.model_state,
                  "sha256": report.model_sha256[:12] if report.model_sha256 else None},
        "embeddings": {"run": report.embeddings_run, "tiles": report.tiles},
        "reducers": report.reducers,
        "tensorflow": tensorflow_info(),
        "cache": report.cache,
        "temp_dir": {"ok": temp_dir_warning() is None},
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
    "Report", "bp", "cache_info", "check", "check_model", "describe", "file_sha256",
    "folder_problem", "forget", "healthz", "planned_cache_info", "preflight", "reducer_problem", "tensorflow_info", "tidy",
]
