"""xBD (xView2) in its native layout: ``<root>/images/<stem>.<ext>`` + ``<root>/labels/<stem>.json``.

The label JSON carries ``metadata`` (disaster, gsd, sun angles, width, height...) and
``features.xy[]``: one building per entry, ``properties.subtype`` holding the damage class
(post-disaster only) and ``wkt`` a polygon in pixel coordinates. Pre- and post-disaster images
of one location share a ``group`` so they always land in the same split (otherwise the test set
leaks the training buildings).

Decisions:

* Images are found by stem whatever the extension (png, jpg, jpeg, tif, tiff, any case); two
  images with one stem are ambiguous and the scene is skipped.
* Polygons may stick out of the image by at most :data:`TOLERANCE_PX` (1 px: xBD's own
  coordinates run from 0 to the image width inclusive); further out the whole scene is rejected,
  because it means the label belongs to another image or crop.
* MULTIPOLYGON and holes are rasterised (holes cut out). ``Building.polygon`` keeps the exterior
  ring of the largest part, which is what centroids and outlines need.
* Rasterisation uses Pillow's polygon fill, which includes the outline pixels (the same
  convention as the ``cv2.fillPoly`` masks of the xView2 baseline).
* Without a ``LoadReport`` the skipped scenes are logged as warnings (never silently dropped).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from app.data.base import DAMAGE_CLASSES, Building, DatasetError, LoadReport, Scene
from app.data.imageio import decode_image
from app.data.pairs import Orphans, Pairs, files_by_stem, iter_pairs, source_folders

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TOLERANCE_PX = 1.0
#: Real label files are ~100 kB; anything this big is not an xBD label.
MAX_LABEL_BYTES = 64 * 1024 * 1024
#: Words of the error when no pair is found: what, what was expected, what orphans are.
_NONE_FOUND = (
    "no xBD scenes found",
    "images/<stem>.png|jpg|tif with labels/<stem>.json",
    "unpaired files",
)

#: ``metadata`` fields copied into ``Scene.meta`` (fixed so every scene has the same columns).
META_NUMBERS: tuple[str, ...] = (
    "gsd",
    "off_nadir_angle",
    "sun_azimuth",
    "sun_elevation",
    "target_azimuth",
    "pan_resolution",
)
META_STRINGS: tuple[str, ...] = (
    "disaster",
    "disaster_type",
    "capture_date",
    "sensor",
    "catalog_id",
)

_PHASES = (("_pre_disaster", "pre"), ("_post_disaster", "post"))

Point = tuple[float, float]
Ring = list[Point]
Polygon = list[Ring]  # exterior first, then holes


def list_xbd(root: Path) -> list[str]:
    """Stems that have both an image and a label, sorted."""
    pairs, _ = _scan(Path(root))
    return [stem for stem, _, _ in pairs]


def count_xbd(root: Path) -> int:
    """How many files ``iter_xbd`` will read or skip (pairs plus unpaired files), from a
    listing only: the total of ``make-dataset``'s progress bar."""
    pairs, orphans = _scan(Path(root))
    return len(pairs) + len(orphans)


def iter_xbd(root: Path, report: LoadReport | None = None) -> Iterator[Scene]:
    """Yield the scenes of an xBD folder lazily, sorted by stem.

    Folder problems (missing ``images``/``labels``, nothing to load) raise
    :class:`DatasetError` immediately; a bad scene is recorded in ``report`` and skipped.
    """
    root = Path(root)
    return iter_pairs(root, _scan(root), read_xbd_scene, report, log, "label", _NONE_FOUND)


def _scan(root: Path) -> tuple[Pairs, Orphans]:
    """Pair images and labels by stem; return the pairs and the (file, reason) orphans."""
    images_dir, labels_dir = source_folders(
        root, "images", "labels", "an xBD root with images/ and labels/"
    )
    images = files_by_stem(images_dir, IMAGE_EXTENSIONS)
    labels = {
        p.stem: p
        for p in labels_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".json"
    }
    pairs: Pairs = []
    orphans: Orphans = []
    for stem in sorted(set(images) | set(labels)):
        found, label = sorted(images.get(stem, [])), labels.get(stem)
        if label is None:
            orphans.append(
                (str(found[0]), f"no label for this image; expected {labels_dir / stem}.json")
            )
        elif not found:
            orphans.append(
                (str(label), f"no image for this label; expected {images_dir / stem}.png|jpg|tif")
            )
        elif len(found) > 1:
            names = ", ".join(p.name for p in found)
            orphans.append((str(label), f"ambiguous: several images share the stem ({names})"))
        else:
            pairs.append((stem, found[0], label))
    return pairs, orphans


def read_xbd_scene(image_path: Path, label_path: Path) -> Scene:
    """Load one xBD image with its label JSON into a :class:`Scene` (mask rasterised)."""
    image_path, label_path = Path(image_path), Path(label_path)
    stem = label_path.stem
    label = _read_label(label_path)
    meta_in = label.get("metadata", {})
    if not isinstance(meta_in, dict):
        raise DatasetError(f"{label_path}: 'metadata' must be an object.")
    image, notes = decode_image(image_path, name=str(image_path))
    height, width = image.shape[:2]
    for key, actual in (("width", width), ("height", height)):
        stated = meta_in.get(key)
        if stated is not None and stated != actual:
            raise DatasetError(
                f"{image_path}: image is {width}x{height} but {label_path.name} says "
                f"metadata.{key} = {stated!r}; expected the image size."
            )
    phase, group = _phase(stem)
    buildings, polygons = _buildings(label, label_path, stem, phase, width, height)
    meta: dict[str, Any] = {"phase": phase}
    for key in META_STRINGS:
        value = meta_in.get(key)
        meta[key] = None if value is None else str(value)
    for key in META_NUMBERS:
        meta[key] = _number(meta_in.get(key), f"{label_path}: metadata.{key}")
    meta.update(notes)
    return Scene(
        scene_id=stem,
        source="xbd",
        image=image,
        mask=rasterise(polygons, height, width),
        buildings=buildings,
        meta=meta,
        group=group,
    )


def _read_label(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_LABEL_BYTES:
            raise DatasetError(
                f"{path}: label file is {size:,} bytes; expected an xBD label JSON "
                f"(at most {MAX_LABEL_BYTES:,})."
            )
        label = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc}); expected an xBD label file.") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read label file ({exc}).") from exc
    if not isinstance(label, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'metadata' and 'features'.")
    features = label.get("features")
    if not isinstance(features, dict) or not isinstance(features.get("xy"), list):
        raise DatasetError(
            f"{path}: no 'features.xy' list; expected an xBD label JSON with "
            f"features.xy[] polygons in pixel coordinates."
        )
    return label


def _phase(stem: str) -> tuple[str | None, str]:
    for suffix, phase in _PHASES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return phase, stem[: -len(suffix)]
    return None, stem


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{what}: expected a number. Got {value!r} instead.") from None
    return number if math.isfinite(number) else None


def _buildings(
    label: dict[str, Any], path: Path, stem: str, phase: str | None, width: int, height: int
) -> tuple[list[Building], list[Polygon]]:
    buildings: list[Building] = []
    polygons: list[Polygon] = []
    for index, feature in enumerate(label["features"]["xy"]):
        where = f"{path}: features.xy[{index}]"
        if not isinstance(feature, dict) or not isinstance(feature.get("wkt"), str):
            raise DatasetError(f"{where}: expected an object with a 'wkt' string.")
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            raise DatasetError(f"{where}: 'properties' must be an object.")
        if props.get("feature_type", "building") != "building":
            continue
        uid = str(props.get("uid") or f"{stem}-{index}")
        try:
            parts = parse_wkt(feature["wkt"])
        except ValueError as exc:
            raise DatasetError(f"{where} (uid {uid}): unparsable WKT: {exc}") from None
        if not parts:
            continue  # POLYGON EMPTY
        _check_inside(parts, width, height, f"{where} (uid {uid})")
        damage = props.get("subtype") if phase != "pre" else None
        if damage is not None and damage not in DAMAGE_CLASSES:
            raise DatasetError(
                f"{where} (uid {uid}): unknown damage subtype {damage!r}; expected one of "
                f"{', '.join(DAMAGE_CLASSES)}."
            )
        largest = max(parts, key=lambda poly: abs(_ring_area(poly[0])))
        buildings.append(Building(uid=uid, polygon=tuple(largest[0]), damage=damage))
        polygons.extend(parts)
    return buildings, polygons


def _check_inside(parts: list[Polygon], width: int, height: int, where: str) -> None:
    for polygon in parts:
        for ring in polygon:
            for x, y in ring:
                if not (
                    -TOLERANCE_PX <= x <= width + TOLERANCE_PX
                    and -TOLERANCE_PX <= y <= height + TOLERANCE_PX
                ):
                    raise DatasetError(
                        f"{where}: polygon vertex ({x:g}, {y:g}) lies outside the {width}x{height} "
                        f"image (tolerance {TOLERANCE_PX:g} px); the label does not match the image."
                    )


# ------------------------------------------------------------------------------------------- WKT

_TOKEN = re.compile(r"\s*(?:(\()|(\))|(,)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))")
_HEADER = re.compile(r"\s*(MULTIPOLYGON|POLYGON)\s*(?:(?:ZM|Z|M)\s*)?", re.IGNORECASE)


def parse_wkt(wkt: str) -> list[Polygon]:
    """Parse WKT ``POLYGON``/``MULTIPOLYGON`` into polygons of rings of (x, y); Z/M dropped.

    Raises ``ValueError`` (with what was expected) on anything else. ``... EMPTY`` gives ``[]``.
    """
    head = _HEADER.match(wkt)
    if head is None:
        raise ValueError(f"expected POLYGON or MULTIPOLYGON, got {wkt[:40]!r}")
    kind, rest = head.group(1).upper(), wkt[head.end() :].strip()
    if rest.upper() == "EMPTY":
        return []
    tree, pos = _parse_list(rest, 0)
    if rest[pos:].strip():
        raise ValueError(f"trailing text after the geometry: {rest[pos : pos + 20]!r}")
    polygons = [tree] if kind == "POLYGON" else tree
    return [_polygon(p) for p in polygons]


def _parse_list(text: str, pos: int) -> tuple[Any, int]:
    """Recursive descent over ``( item, item )`` where an item is a list or a coordinate."""
    match = _TOKEN.match(text, pos)
    if match is None or match.group(1) is None:
        raise ValueError(f"expected '(' at character {pos}")
    pos = match.end()
    items: list[Any] = []
    while True:
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected text at character {pos}: {text[pos : pos + 20]!r}")
        if match.group(1):
            item, pos = _parse_list(text, pos)
        elif match.group(4):
            numbers: list[float] = []
            while (match := _TOKEN.match(text, pos)) is not None and match.group(4):
                numbers.append(float(match.group(4)))
                pos = match.end()
            if len(numbers) < 2:
                raise ValueError(f"coordinate with {len(numbers)} number(s) at character {pos}")
            item = (numbers[0], numbers[1])
        else:
            raise ValueError(f"empty or malformed list at character {pos}")
        items.append(item)
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unterminated list at character {pos}")
        pos = match.end()
        if match.group(2):
            return items, pos
        if not match.group(3):
            raise ValueError(f"expected ',' or ')' at character {pos}")


def _polygon(rings: Any) -> Polygon:
    if not isinstance(rings, list) or not rings:
        raise ValueError("a polygon must be a list of rings")
    out: Polygon = []
    for ring in rings:
        if not isinstance(ring, list) or not all(isinstance(p, tuple) for p in ring):
            raise ValueError("a ring must be a list of 'x y' coordinates")
        if not all(math.isfinite(v) for p in ring for v in p):
            raise ValueError("non-finite coordinate")
        points = ring[:-1] if len(ring) > 1 and ring[0] == ring[-1] else list(ring)
        if len(points) < 3:
            raise ValueError(f"a ring needs at least 3 distinct points, got {len(points)}")
        out.append(points)
    return out


def _ring_area(ring: Ring) -> float:
    xs = np.array([p[0] for p in ring])
    ys = np.array([p[1] for p in ring])
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def rasterise(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """Fill polygons into an (H, W) uint8 {0, 1} mask; holes are cut out of their own polygon only.

    A polygon with holes is drawn on a scratch canvas cropped to its bounding box, then OR-ed in,
    so its holes never erase a neighbouring building.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        exterior, holes = polygon[0], polygon[1:]
        if not holes:
            draw.polygon(exterior, fill=1)
            continue
        xs = [p[0] for p in exterior]
        ys = [p[1] for p in exterior]
        x0, y0 = max(0, math.floor(min(xs)) - 1), max(0, math.floor(min(ys)) - 1)
        x1, y1 = min(width, math.ceil(max(xs)) + 2), min(height, math.ceil(max(ys)) + 2)
        if x1 <= x0 or y1 <= y0:
            continue
        scratch = Image.new("L", (x1 - x0, y1 - y0), 0)
        sdraw = ImageDraw.Draw(scratch)
        sdraw.polygon([(x - x0, y - y0) for x, y in exterior], fill=1)
        for hole in holes:
            sdraw.polygon([(x - x0, y - y0) for x, y in hole], fill=0, outline=None)
        region = (x0, y0, x1, y1)
        merged = np.maximum(np.asarray(canvas.crop(region)), np.asarray(scratch))
        canvas.paste(Image.fromarray(merged), region)
    return np.asarray(canvas, dtype=np.uint8).copy()
