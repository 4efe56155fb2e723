"""Records shared by every dataset loader.

A *scene* is one aerial image (e.g. a 1024x1024 xBD image) with its building mask, its buildings
and its metadata. Loaders yield scenes lazily so memory stays bounded; ``app.data.tiling`` cuts
them into tiles and ``app.data.dataset`` stores the tiles on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Damage classes in xBD's vocabulary (``properties.subtype``). ``None`` on a building means the
#: source has no damage label for it (e.g. pre-disaster images).
DAMAGE_CLASSES: tuple[str, ...] = (
    "no-damage",
    "minor-damage",
    "major-damage",
    "destroyed",
    "un-classified",
)


class DatasetError(ValueError):
    """Bad input data. The message always names the file or field and what was expected."""


@dataclass(frozen=True)
class Building:
    """One labelled building, polygon in pixel coordinates of its scene (x, y)."""

    uid: str
    polygon: tuple[tuple[float, float], ...]
    damage: str | None = None


@dataclass
class Scene:
    """One aerial image with its labels.

    ``scene_id`` is stable and unique within a source (xBD: the file stem). ``group`` ties scenes
    that must land in the same train/val/test split (xBD pre/post pair of one location).
    ``meta`` holds flat JSON scalars only (str, int, float, bool, None) so it maps onto table
    columns: e.g. disaster, disaster_type, phase ("pre"/"post"), gsd, sun_elevation,
    density, shoreline, land_grass, scaling ("percentile 2-98 from uint16").
    """

    scene_id: str
    source: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) uint8 in {0, 1}; None when the source has no labels
    buildings: list[Building] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.scene_id
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise DatasetError(
                f"Scene {self.scene_id!r}: image must be (H, W, 3) uint8. "
                f"Got {self.image.shape} {self.image.dtype} instead."
            )
        if self.mask is not None and self.mask.shape != self.image.shape[:2]:
            raise DatasetError(
                f"Scene {self.scene_id!r}: mask shape {self.mask.shape} differs from image "
                f"shape {self.image.shape[:2]}."
            )


@dataclass
class LoadReport:
    """What a loader read and what it skipped (never silently dropped)."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def skip(self, file: str, reason: str) -> None:
        self.skipped.append((file, reason))

    def summary(self) -> str:
        text = f"{self.loaded} loaded, {len(self.skipped)} skipped"
        for file, reason in self.skipped[:10]:
            text += f"\n  skipped {file}: {reason}"
        if len(self.skipped) > 10:
            text += f"\n  ... and {len(self.skipped) - 10} more"
        return text
