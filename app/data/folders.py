"""Image + mask folders (Inria, Massachusetts, converted SpaceNet): ``<root>/images/*`` and
``<root>/masks/*`` paired by file stem.

Decisions:

* Extensions: png, jpg, jpeg, tif, tiff, bmp, webp (any case); the mask may use another
  extension than its image (Massachusetts ships ``.tiff`` images with ``.tif`` masks).
* An image without a mask (or a mask without an image, or a stem shared by several files) is
  recorded in the ``LoadReport`` and skipped; if no pair at all is left the folder is refused.
* These sources have no polygons, so buildings are derived from the mask's 8-connected
  components: outline = traced contour (``skimage.measure.find_contours``), damage ``None``.
  Tile building counts then mean the same thing as for xBD (components whose centroid is in
  the tile). Polygons use xBD's pixel convention (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from app.data.base import Building, LoadReport, Scene
from app.data.imageio import decode_image, decode_mask
from app.data.pairs import Orphans, Pairs, files_by_stem, iter_pairs, source_folders

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
#: Words of the error when no pair is found: what, what was expected, what orphans are.
_NONE_FOUND = (
    "no image/mask pairs found",
    "images/<stem>.<ext> with masks/<stem>.<ext>",
    "unpaired",
)


def list_folder(root: Path) -> list[str]:
    """Stems that have both an image and a mask, sorted."""
    pairs, _ = _scan(Path(root))
    return [stem for stem, _, _ in pairs]


def count_folder(root: Path) -> int:
    """How many files ``iter_folder`` will read or skip (pairs plus unpaired files), from a
    listing only: the total of ``make-dataset``'s progress bar."""
    pairs, orphans = _scan(Path(root))
    return len(pairs) + len(orphans)


def iter_folder(root: Path, report: LoadReport | None = None) -> Iterator[Scene]:
    """Yield the scenes of an image+mask folder lazily, sorted by stem.

    Folder problems (missing ``images``/``masks``, empty, no pair at all) raise
    :class:`DatasetError` immediately; a bad pair is recorded in ``report`` and skipped.
    """
    root = Path(root)
    return iter_pairs(root, _scan(root), read_folder_scene, report, log, "image", _NONE_FOUND)


def read_folder_scene(image_path: Path, mask_path: Path) -> Scene:
    """Load one image with its mask; the mask must have the image's size."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    image, notes = decode_image(image_path, name=str(image_path))
    mask = decode_mask(mask_path, name=str(mask_path), expected_shape=image.shape[:2])
    stem = image_path.stem
    return Scene(
        scene_id=stem,
        source="folder",
        image=image,
        mask=mask,
        buildings=buildings_from_mask(mask, stem),
        meta=dict(notes),
        group=stem,
    )


def buildings_from_mask(mask: np.ndarray, scene_id: str) -> list[Building]:
    """One :class:`Building` per 8-connected component of ``mask``, outline traced and simplified.

    Each component is traced on its own padded bounding-box crop, so cost grows with building
    area, not image area.
    """
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    buildings: list[Building] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = np.pad(labels[box] == index, 1).astype(np.float32)
        contours = find_contours(crop, 0.5)
        if not contours:
            continue
        ring = approximate_polygon(max(contours, key=len), tolerance=0.5)
        r0, c0 = box[0].start - 1, box[1].start - 1
        # find_contours gives (row, col) of pixel centres; +0.5 moves to pixel-edge coordinates.
        points = tuple((float(c + c0 + 0.5), float(r + r0 + 0.5)) for r, c in ring[:-1])
        if len(points) < 3:  # a single pixel or a line: use its pixel square
            rows, cols = box
            points = (
                (float(cols.start), float(rows.start)),
                (float(cols.stop), float(rows.start)),
                (float(cols.stop), float(rows.stop)),
                (float(cols.start), float(rows.stop)),
            )
        buildings.append(Building(uid=f"{scene_id}-{index}", polygon=points, damage=None))
    return buildings


def _scan(root: Path) -> tuple[Pairs, Orphans]:
    """Pair images and masks by stem; return the pairs and the (file, reason) orphans."""
    images_dir, masks_dir = source_folders(
        root, "images", "masks", "a root with images/ and masks/"
    )
    images = files_by_stem(images_dir, EXTENSIONS)
    masks = files_by_stem(masks_dir, EXTENSIONS)
    pairs: Pairs = []
    orphans: Orphans = []
    for stem in sorted(set(images) | set(masks)):
        imgs, msks = sorted(images.get(stem, [])), sorted(masks.get(stem, []))
        if not msks:
            orphans.append((str(imgs[0]), f"mask missing; expected {masks_dir / stem}.<ext>"))
        elif not imgs:
            orphans.append(
                (str(msks[0]), f"image missing for this mask; expected {images_dir / stem}.<ext>")
            )
        elif len(imgs) > 1 or len(msks) > 1:
            names = ", ".join(p.name for p in imgs + msks)
            orphans.append((str(imgs[0]), f"ambiguous: several files share the stem ({names})"))
        else:
            pairs.append((stem, imgs[0], msks[0]))
    return pairs, orphans
