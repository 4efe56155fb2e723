"""TensorFlow's start-up, said once and plainly.

Why: on a machine without a GPU, ``import tensorflow`` writes "Could not find cuda drivers" twice
(two of its libraries each load the CUDA stub) with an absl preamble before each, and the first
device query adds ``failed call to cuInit: CUDA error``. Those lines are written from C++ while
the libraries load, before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so the variable alone cannot
hide them. ``app/__init__.py`` calls :func:`install` before anything imports TensorFlow:

- ``TF_CPP_MIN_LOG_LEVEL`` defaults to 3 (errors hidden too); a value the user set wins;
- the first ``import tensorflow`` in the process runs with file descriptor 2 captured; afterwards
  the captured text is written back without the C++ log lines below that level (and without
  the cuInit error when no GPU is found), so nothing else written meanwhile is lost;
- then one line goes to stderr: ``no GPU found, running on CPU`` or ``GPU: <names>``.

Nothing here imports TensorFlow itself: a process that never imports it pays nothing.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

DEFAULT_LOG_LEVEL = "3"

#: A C++ log line of TensorFlow/absl: ``I0000 00:00:1795616452.138486    8797 file.cc:31] ...``.
_CPP_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]*\] ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_CUINIT = b"failed call to cuInit"


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as an int (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_startup_lines(text: bytes, level: int, *, no_gpu: bool) -> bytes:
    """``text`` without TensorFlow's C++ log lines below ``level`` (and their absl preamble),
    and without the cuInit error when ``no_gpu`` (the plain device line says it instead)."""
    if level <= 0:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        match = _CPP_LINE.match(line)
        if match and (_SEVERITY[match.group(1)] < level or (no_gpu and _CUINIT in line)):
            continue
        if line.startswith(_ABSL_PREAMBLE):
            continue
        kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def _captured_fd2() -> Iterator[list[bytes]]:
    """Point file descriptor 2 at a temporary file inside the block; the caller gets what was
    written there (appended to the yielded list) and writes it back itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[bytes] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read())


def device_line(gpu_names: Sequence[str]) -> str:
    """The one line said about devices."""
    if not gpu_names:
        return "no GPU found, running on CPU"
    return f"GPU{'s' if len(gpu_names) > 1 else ''}: {', '.join(gpu_names)}"


def _gpu_names(tf: Any) -> list[str]:
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            names.append(str(tf.config.experimental.get_device_details(gpu).get("device_name")
                             or gpu.name))
        except Exception:  # noqa: BLE001 - a name is a nicety
            names.append(gpu.name)
    return names


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with fd 2 captured, then reports the devices."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Our own attributes point back at the real loader, so nothing downstream sees this one.
        module.__loader__ = self.real
        if module.__spec__ is not None:
            module.__spec__.loader = self.real
        level = min_log_level()
        gpus: list[str] | None = None
        captured: list[bytes] = []
        try:
            # At level 0 the user asked for everything: nothing is captured (nor held back).
            with _captured_fd2() if level > 0 else contextlib.nullcontext(captured) as captured:
                self.real.exec_module(module)
                with contextlib.suppress(Exception):  # a failed query must not fail the import
                    gpus = _gpu_names(module)
        finally:  # also when the import failed: what it wrote may say why
            rest = filter_startup_lines(b"".join(captured), level, no_gpu=gpus == [])
            line = "" if gpus is None else device_line(gpus) + "\n"
            with contextlib.suppress(OSError):
                os.write(2, rest + line.encode())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first ``import tensorflow``, then removes itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        with self._lock:
            if self not in sys.meta_path:
                return None
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Default ``TF_CPP_MIN_LOG_LEVEL`` to 3 and quiet the first ``import tensorflow``
    (once per process; nothing when TensorFlow is already imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LOG_LEVEL)
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorFlowFinder)
                                          for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowFinder())
