"""Artifacts the callbacks share, loaded lazily and once per process.

Nothing is read at import (so gunicorn can fork first). Runs are looked up by id: an id from the
browser is validated as a slug and must be listed under the embeddings folder before anything is
opened, so it never becomes a path by itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app import artifacts, config
from app.artifacts import ArtifactError, EmbeddingsRun

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
    for name in ("tiles.parquet", "reduced/coords.parquet", "reduced/labels.npy"):
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


__all__ = [
    "Vectors", "configure", "default_run_id", "embeddings_root", "get_run",
    "list_embeddings_runs", "model_run", "run_error", "run_version", "vectors", "wanted_run_id",
]
