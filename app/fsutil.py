"""Crash-safe file-system helpers shared by every writer (datasets, model runs, embeddings).

Readers (the dashboard) may look at a dataset or run while it is being rebuilt; they must see
either the complete old version or the complete new one, never a half-written folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "sha256_file", "write_bytes_atomic"]


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp folder next to ``final``; on success it replaces ``final`` atomically.

    The temp folder is ``<parent>/.tmp-<name>-<random>`` (same file system, so the rename is
    atomic). On success an existing ``final`` is moved aside, the new folder renamed in, then the
    old one deleted; if the rename fails the old one is put back. On any exception inside the
    block the temp folder is removed and ``final`` is untouched. One writer per ``final`` at a
    time; durability against power loss is not promised (files are not fsynced one by one).
    """
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(parent, f".tmp-{final.name}-")
    tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0o700)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if final.exists() or final.is_symlink():
            old = _fresh_name(parent, f".old-{final.name}-")
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            _remove(old)
    _fsync_dir(parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(path.parent, f".tmp-{path.name}-")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large weights/tables do not load into memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _fresh_name(parent: Path, prefix: str) -> Path:
    while True:
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        if not candidate.exists():
            return candidate


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(path: Path) -> None:
    """Persist a rename in its folder (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
