"""The runs the dashboard serves: embeddings runs, their tiles, and the model for each.

Everything here is loaded lazily and once per process; nothing is read at import (so gunicorn can
fork first). Runs are looked up by id: an id from the browser is validated as a slug and must be
listed under the embeddings folder before anything is opened, so it never becomes a path by
itself.

Model choice for an embeddings run: the model run the app was started with
(``--model-run`` / ``$UNET_LENS_MODEL_RUN``), else the run's own ``model_run``, else the
demo's, the first that exists in ``config.MODEL_STORE``. A model whose SHA-256 differs from the
run's ``model_sha256`` is used with a visible warning (its vectors and maps may not match).
TensorFlow is imported by :mod:`app.ml.inference` on the first model use, never here.

Stored tile pixels come from the run's source dataset when it is on disk (lossless), else from
the run's stored JPEGs; :mod:`app.web.images` turns computed arrays into data URIs.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app import artifacts, config
from app.artifacts import ArtifactError, EmbeddingsRun
from app.data.base import DatasetError
from app.ml import inference
from app.ml.apply import place_new

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runs: dict[str, tuple[EmbeddingsRun, int]] = {}  # run id → (run, manifest mtime)
_vectors: dict[str, Vectors] = {}
_errors: dict[str, tuple[int, float, str]] = {}  # run id → (manifest mtime, when, why it failed)
#: A run that failed to open is not retried for this long unless its manifest changes.
RETRY_SECONDS = 5.0
_settings: dict[str, object] = {"embeddings_run": None, "model_run": None, "root": None}


@dataclass(frozen=True)
class Vectors:
    """A run's vectors as float32 in memory with their L2 norms (for neighbour search)."""

    data: np.ndarray  # (n, d) float32
    norms: np.ndarray  # (n,) float32 L2 norms, 0 replaced by 1 (safe to divide by)
    sqnorms: np.ndarray  # (n,) float32 squared L2 norms (exact, for Euclidean distances)


def configure(
    embeddings_run: str | None = None,
    model_run: str | None = None,
    root: Path | None = None,
) -> None:
    """Set the default runs (and, for tests, the embeddings folder); forget loaded runs."""
    with _lock:
        _settings.update(embeddings_run=embeddings_run, model_run=model_run, root=root)
        _runs.clear()
        _vectors.clear()
        _errors.clear()


def embeddings_root() -> Path:
    """The folder holding embeddings runs (read at call time, so tests can point elsewhere)."""
    root = _settings["root"]
    return Path(root) if root else config.EMBEDDINGS_DIR


def model_run() -> str | None:
    """The model run the app was started with (for pages that need the network)."""
    value = _settings["model_run"] or os.environ.get("UNET_LENS_MODEL_RUN")
    return str(value) if value else None


def list_embeddings_runs() -> list[str]:
    """Ids of the embeddings runs on disk, sorted."""
    return artifacts.list_runs(embeddings_root())


def wanted_run_id() -> str | None:
    """The run asked for (``--embeddings-run`` or ``$UNET_LENS_EMBEDDINGS_RUN``), if any."""
    value = _settings["embeddings_run"] or os.environ.get("UNET_LENS_EMBEDDINGS_RUN")
    return str(value) if value else None


def default_run_id() -> str | None:
    """The configured run, else ``$UNET_LENS_EMBEDDINGS_RUN``, else the demo, else the first."""
    runs = list_embeddings_runs()
    for candidate in (
        _settings["embeddings_run"],
        os.environ.get("UNET_LENS_EMBEDDINGS_RUN"),
        config.DEMO_EMBEDDINGS_RUN,
    ):
        if candidate and candidate in runs:
            return str(candidate)
    return runs[0] if runs else None


def get_run(run_id: str | None) -> EmbeddingsRun | None:
    """The open run with this id, or None for a malformed, unknown or unreadable id."""
    if not run_id or not isinstance(run_id, str):
        return None
    cached = _runs.get(run_id)
    if cached is not None and _manifest_mtime(cached[0].path) == cached[1]:
        return cached[0]
    try:
        artifacts.validate_run_id(run_id)
    except ArtifactError:
        return None
    root = embeddings_root()
    if run_id not in artifacts.list_runs(root):
        return None
    path = root / run_id
    failed = _errors.get(run_id)
    if (failed is not None and failed[0] == _manifest_mtime(path)
            and time.monotonic() - failed[1] < RETRY_SECONDS):
        return None  # a broken run is not re-read on every request
    with _lock:
        cached = _runs.get(run_id)
        if cached is None or _manifest_mtime(path) != cached[1]:
            mtime = _manifest_mtime(path)
            try:
                # The maps and clusters need no network, so the model's hash is not checked here.
                run = EmbeddingsRun.open(run_id, root, check_model=False)
                run.tiles  # noqa: B018 - read once, under the lock
                run.index  # noqa: B018
            except ArtifactError as exc:
                log.warning("cannot open embeddings run %r: %s", run_id, exc)
                _errors[run_id] = (mtime, time.monotonic(), str(exc))
                _runs.pop(run_id, None)
                return None
            cached = (run, mtime)
            _runs[run_id] = cached
            _errors.pop(run_id, None)
            _vectors.pop(run_id, None)
    return cached[0]


def run_error(run_id: str | None) -> str | None:
    """Why the last ``get_run(run_id)`` returned None for a listed run (None if it did not)."""
    failed = _errors.get(run_id) if isinstance(run_id, str) else None
    return failed[2] if failed is not None else None


def _manifest_mtime(path: Path) -> int:
    """The manifest's mtime: a rebuilt run (written atomically) gets a new one."""
    try:
        return (path / "manifest.json").stat().st_mtime_ns
    except OSError:
        return -1


def run_version(run: EmbeddingsRun) -> str:
    """A short hash that changes whenever the run is rebuilt (for cache keys and image URLs)."""
    key = run.manifest.get("created", "")
    for name in ("tiles.parquet", "reduced/coords.parquet", "reduced/labels.npy",
                 "ood/scores.parquet"):
        path = run.path / name
        if path.is_file():
            st = path.stat()
            key += f"|{name}:{st.st_mtime_ns}:{st.st_size}"
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def vectors(run: EmbeddingsRun) -> Vectors:
    """The run's vectors as float32 with norms, loaded once per run."""
    cached = _vectors.get(run.run_id)
    if cached is not None:
        return cached
    with _lock:
        cached = _vectors.get(run.run_id)
        if cached is None:
            data = np.ascontiguousarray(run.vectors, dtype=np.float32)
            sqnorms = np.einsum("ij,ij->i", data, data)
            norms = np.sqrt(sqnorms)
            norms[norms == 0] = 1.0
            cached = Vectors(data=data, norms=norms, sqnorms=sqnorms)
            _vectors[run.run_id] = cached
    return cached


# --------------------------------------------------------------------------- the model


@dataclass
class ModelInfo:
    """The model a page uses for a run, or why there is none."""

    service: inference.ModelService | None
    run_id: str | None
    message: str = ""  # why there is no model (shown instead of the page's results)
    warning: str = ""  # the model differs from the one the embeddings were made with

    @property
    def ok(self) -> bool:
        return self.service is not None


def model_run_for(run: EmbeddingsRun | None) -> str | None:
    """The model run to use with ``run`` (see the module docstring), or None."""
    available = set(artifacts.list_runs(config.MODEL_STORE))
    candidates = (model_run(), run.model_run if run is not None else None,
                  config.DEMO_MODEL_RUN)
    for candidate in candidates:
        if candidate and candidate in available:
            return str(candidate)
    return None


def model_for(run: EmbeddingsRun | None) -> ModelInfo:
    """The loaded model for ``run`` (loading it on first use), or a message saying why not."""
    run_id = model_run_for(run)
    if run_id is None:
        wanted = run.model_run if run is not None else config.DEMO_MODEL_RUN
        return ModelInfo(None, None, message=(
            f"No model run {wanted!r} in {config.MODEL_STORE}. Train one with "
            "`python -m app train`, or start the dashboard with `--model-run <id>`."))
    service = inference.get_service(run_id)
    try:
        sha = service.sha256  # loads the model (hash-checked) on first use
    except (ArtifactError, OSError, ValueError) as exc:
        _record(run_id, "failed", str(exc))
        return ModelInfo(None, run_id, message=f"Cannot load model run {run_id!r}: {exc}")
    warning = ""
    if run is not None:
        expected = run.manifest.get("model_sha256")
        if run_id != run.model_run or (expected and expected != sha):
            warning = (f"Embeddings run {run.run_id} was made with model {run.model_run} "
                       f"({str(expected)[:10]}…); this page runs model {run_id} ({sha[:10]}…), "
                       "so maps and vectors may not match its outputs.")
    return ModelInfo(service, run_id, warning=warning)


# --------------------------------------------------------------------------- model proof


@dataclass(frozen=True)
class ModelCheck:
    """What this process found when it last loaded a model run and ran it once."""

    state: str  # "loading", "ok" (loaded and a tiny forward pass worked) or "failed"
    reason: str  # why it failed, or what was proven
    key: tuple | None  # the model file's (size, mtime, inode) then; None when it was missing


_checks: dict[tuple[str, str], ModelCheck] = {}  # (model store, run id) → last check
#: The forward pass that proves a loaded model works: one grey image of this side (a multiple
#: of the U-Net's pooling factor), answered in milliseconds once the graph is traced.
PROOF_SIDE = 32


def _model_key(run_id: str) -> tuple | None:
    try:
        path = artifacts.model_dir(run_id) / artifacts.MODEL_FILE
        if not path.exists():  # an imported legacy model (manifest "model_file": model.h5)
            name = artifacts.model_file_name(artifacts.read_model_manifest(run_id), run_id)
            path = path.with_name(name)
        st = path.stat()
    except (OSError, ArtifactError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _record(run_id: str, state: str, reason: str) -> None:
    if state == "failed":
        log.warning("model run %s cannot be used: %s", run_id, reason)
        lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
        reason = (lines[0] if lines else "unknown error")[:300]
    _checks[(str(config.MODEL_STORE), run_id)] = ModelCheck(state, reason, _model_key(run_id))


def model_check(run_id: str | None) -> ModelCheck | None:
    """This process's last load-and-run of ``run_id``, or None when there was none, or when it
    failed and the file has changed since (a new warm-up is then started, when warm-ups are on:
    the next load reads the new file). A model that loaded keeps serving until a restart."""
    if not run_id:
        return None
    found = _checks.get((str(config.MODEL_STORE), run_id))
    if found is None:
        return None
    if found.state == "failed" and found.key != _model_key(run_id):
        if config.WARM_UP and not _warm_up_running():
            start_warm_up()  # the file was replaced: try (and prove) the new one
        return None
    return found


def prove_model(service: inference.ModelService) -> str:
    """Run a tiny forward pass and check its output; what was proven, or ``ValueError``."""
    side = PROOF_SIDE
    out = service.predict_batch(np.full((1, side, side, 3), 128.0, np.float32))
    if out.shape != (1, side, side):
        raise ValueError(f"a {side}x{side} image gave an output of shape {tuple(out.shape)}, "
                         f"not (1, {side}, {side}).")
    if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise ValueError(f"a {side}x{side} image gave values outside [0, 1] (or NaN).")
    return f"loaded, and a {side}x{side} forward pass gave a probability map"


#: Set at interpreter exit: the warm-up stops at its next step (see :func:`_finish_warm_up`).
_warm_up_stop = threading.Event()
_warm_up_threads: list[threading.Thread] = []


def _warm_up_running() -> bool:
    return any(t.is_alive() for t in _warm_up_threads)


def _finish_warm_up(timeout: float = 120.0) -> None:
    """Let a running warm-up end before the interpreter does.

    Python ends daemon threads at exit wherever they are; one that is inside TensorFlow's C++
    code then aborts the whole process ("FATAL: exception not rethrown", exit code 134), which
    is what a test run or a worker that exits during its warm-up saw. Each warm-up step is
    bounded, so stopping between steps and joining is enough.
    """
    _warm_up_stop.set()
    for thread in _warm_up_threads:
        thread.join(timeout)


atexit.register(_finish_warm_up)


def start_warm_up() -> threading.Thread | None:
    """Load the default run's model and prove it works (:func:`prove_model`: a tiny forward
    pass, whose outcome ``/healthz`` reports: a model that fails makes the server not ready),
    then warm it (``ModelService.warm_up``) and its reducers in a daemon thread, so the first
    Grad-CAM or upload does not pay for graph tracing or numba's JIT. Off with
    ``UNET_LENS_WARM_UP=0`` (``/healthz`` then relies on the file's hash alone).

    Failures are logged in one line, never raised: the pages report a broken model themselves.
    """
    if not config.WARM_UP:
        return None

    def work() -> None:
        model_id = None
        try:
            started = time.perf_counter()
            run = get_run(default_run_id())
            model_id = model_run_for(run)
            if model_id is not None:
                _record(model_id, "loading", "")
            info = model_for(run)  # loads the model (a failure is recorded)
            if info.service is None:
                log.warning("warm-up skipped: %s", info.message)
                return
            if _warm_up_stop.is_set():
                return
            _record(str(info.run_id), "ok", prove_model(info.service))
            timings = {"load": time.perf_counter() - started, **{
                k: v for k, v in info.service.warm_up().items() if k != "load"}}
            if run is not None and len(run.vectors) and not _warm_up_stop.is_set():
                # Load the reducers and compile their transforms (UMAP's numba JIT alone is
                # ~10 s): the first upload's "place on the maps" then costs what later ones do.
                started = time.perf_counter()
                place_new(run, np.asarray(run.vectors[0], dtype=np.float32))
                timings["reducers"] = time.perf_counter() - started
            log.info("model %s warm: %s", info.run_id,
                     ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
        except Exception as exc:  # noqa: BLE001 - a warm-up must never take the server down
            check = _checks.get((str(config.MODEL_STORE), model_id or ""))
            if check is not None and check.state == "loading":
                _record(model_id, "failed", f"{type(exc).__name__}: {exc}")
            else:
                log.exception("model warm-up failed")

    thread = threading.Thread(target=work, name="model-warm-up", daemon=True)
    _warm_up_threads[:] = [t for t in _warm_up_threads if t.is_alive()] + [thread]
    thread.start()
    return thread


# --------------------------------------------------------------------------- stored tiles


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


_datasets: dict[str, Any] = {}
_datasets_lock = threading.Lock()


def tile_dataset(run: EmbeddingsRun) -> Any | None:
    """The run's source dataset when it is on disk (lossless tiles, full-resolution masks)."""
    name = (run.manifest.get("dataset") or {}).get("path")
    if not name or not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = config.DATASETS_DIR / name
    key = str(path)
    with _datasets_lock:
        if key not in _datasets:
            # imported on first use: app.data.dataset pulls in pandas
            from app.data.dataset import TileDataset

            try:
                _datasets[key] = TileDataset.open(path) if path.is_dir() else None
            except DatasetError as exc:
                log.info("dataset %s not usable: %s", path, exc)
                _datasets[key] = None
        return _datasets[key]


def tile_image(run: EmbeddingsRun, tile_id: str) -> np.ndarray | None:
    """(H, W, 3) uint8 pixels of a stored tile: the dataset's PNG when available, else the
    run's full-size JPEG, else its thumbnail; None for an unknown id."""
    if tile_id not in run.index:
        return None
    dataset = tile_dataset(run)
    if dataset is not None:
        try:
            return dataset.image(tile_id)
        except (KeyError, OSError, ValueError):
            pass
    for kind in ("image", "thumb"):
        path = run.file_for(kind, tile_id)
        if path is not None:
            return _read_rgb(path)
    return None


def tile_truth(run: EmbeddingsRun, tile_id: str) -> np.ndarray | None:
    """(h, w) bool ground truth of a stored tile: full resolution from the dataset when it is
    on disk, else the run's stored mask (thumbnail size); None without truth."""
    if tile_id not in run.index:
        return None
    dataset = tile_dataset(run)
    if dataset is not None:
        try:
            mask = dataset.mask(tile_id)
            if mask is not None:
                return mask.astype(bool)
        except (KeyError, OSError, ValueError):
            pass
    path = run.file_for("true", tile_id)
    return _read_mask(path) if path is not None else None


__all__ = [
    "ModelCheck", "ModelInfo", "Vectors", "configure", "default_run_id", "embeddings_root", "get_run",
    "list_embeddings_runs", "model_check", "model_for", "model_run", "model_run_for", "run_error",
    "prove_model", "run_version", "start_warm_up", "tile_dataset", "tile_image", "tile_truth", "vectors",
    "wanted_run_id",
]
