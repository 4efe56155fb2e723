"""Folder sources that pair each image with a label file by stem (xBD: ``labels/*.json``,
image+mask folders: ``masks/*``): the folder checks, the listing, and the lazy reading with
skips, in one place so both loaders refuse and skip files the same way, with the same words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from app.data.base import DatasetError, LoadReport, Scene

#: A loader's pairs: (stem, image path, label path), sorted by stem.
Pairs = list[tuple[str, Path, Path]]
#: Files that could not be paired: (file, reason).
Orphans = list[tuple[str, str]]


def source_folders(root: Path, first: str, second: str, expected: str) -> tuple[Path, Path]:
    """``root/first`` and ``root/second``; a :class:`DatasetError` naming what is missing
    (``expected`` says what a good root looks like) when either is not a folder."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected {expected}.")
    dirs = root / first, root / second
    for folder in dirs:
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder missing; expected {expected}.")
    return dirs


def files_by_stem(folder: Path, extensions: Sequence[str]) -> dict[str, list[Path]]:
    """The visible files of ``folder`` whose extension (any case) is in ``extensions``, by stem."""
    found: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in extensions:
            found.setdefault(path.stem, []).append(path)
    return found


def skip(report: LoadReport | None, file: str, reason: str, log: logging.Logger) -> None:
    """Record a skipped file in ``report``, or log it as a warning when there is no report."""
    if report is None:
        log.warning("skipped %s: %s", file, reason)
    else:
        report.skip(file, reason)


def no_pairs_error(
    root: Path, orphans: Orphans, found: str, expected: str, unpaired: str
) -> DatasetError:
    """The error of a loader that found no pair at all: what it looked for, and the first
    orphan (or that both folders are empty), so the user sees what to fix."""
    detail = (
        f" ({len(orphans)} {unpaired}, e.g. {orphans[0][0]}: {orphans[0][1]})"
        if orphans
        else " (both folders are empty)."
    )
    return DatasetError(f"{root}: {found}; expected {expected}" + detail)


def iter_pairs(
    root: Path,
    scanned: tuple[Pairs, Orphans],
    read: Callable[[Path, Path], Scene],
    report: LoadReport | None,
    log: logging.Logger,
    blame: Literal["image", "label"],
    none_found: tuple[str, str, str],
) -> Iterator[Scene]:
    """Scenes of the ``(pairs, orphans)`` a loader's scan of ``root`` found, read lazily.

    No pair at all raises :func:`no_pairs_error` (with the ``none_found`` words: what was not
    found, what was expected, what orphans are called) at once, not on the first ``next``.
    Otherwise the orphans are skipped first, then every pair that ``read`` refuses with a
    :class:`DatasetError`, named by its image or its label (``blame``). Skips go to ``report``
    (or to ``log`` without one); each scene read counts in ``report.loaded``. Shared by the
    folder loaders so both skip files the same way, with the same words.
    """
    pairs, orphans = scanned
    if not pairs:
        raise no_pairs_error(root, orphans, *none_found)
    return _read_pairs(pairs, orphans, read, report, log, blame)


def _read_pairs(
    pairs: Pairs,
    orphans: Orphans,
    read: Callable[[Path, Path], Scene],
    report: LoadReport | None,
    log: logging.Logger,
    blame: Literal["image", "label"],
) -> Iterator[Scene]:
    for file, reason in orphans:
        skip(report, file, reason, log)
    for _stem, image_path, label_path in pairs:
        try:
            scene = read(image_path, label_path)
        except DatasetError as exc:
            skip(report, str(image_path if blame == "image" else label_path), str(exc), log)
            continue
        if report is not None:
            report.loaded += 1
        yield scene
