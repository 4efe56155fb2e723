"""The run's tile table as the explore, clusters and segment pages and the API read it.

Plain numpy / pandas work on stored artifacts (no network, no Dash): which maps a run has and
their coordinates, colourings of the points, one tile's record, nearest neighbours in the
original embedding space, and paging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from app import artifacts
from app.ml import registry
from app.ml.neighbours import nearest_rows
from app.web import theme
from app.web.runs import Vectors

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from app.artifacts import EmbeddingsRun

PER_PAGE = 24
MAX_CATEGORIES = 20
FIXED_ORDERS: dict[str, tuple[str, ...]] = {
    "phase": ("pre", "post"),
    "split": ("train", "val", "test"),
    "damage": theme.DAMAGE_ORDER,
}

#: value → (label, kind); only the options whose column exists are offered.

#: value → (label, kind); only the options whose column exists are offered.
COLOUR_OPTIONS: dict[str, tuple[str, str]] = {
    "cluster": ("K-means cluster", "categorical"),
    "disaster": ("Disaster", "categorical"),
    "source": ("Source", "categorical"),
    "phase": ("Phase (pre / post)", "categorical"),
    "damage": ("Dominant damage class", "categorical"),
    "true_fraction": ("True building fraction", "continuous"),
    "pred_fraction": ("Predicted building fraction", "continuous"),
    "iou": ("IoU", "continuous"),
    "silhouette": ("Silhouette", "continuous"),
    "split": ("Split", "categorical"),
    "ood_score": ("Out-of-distribution score (percentile)", "continuous"),
}

# --------------------------------------------------------------------------- maps


def available_methods(tiles: pd.DataFrame) -> list[str]:
    """The 2-D maps a run has (both columns present and not all missing)."""
    out = []
    for m in registry.reducer_names():
        cx, cy = f"{m}_x", f"{m}_y"
        if cx in tiles and cy in tiles and tiles[cx].notna().any():
            out.append(m)
    return out


#: The map shown first when a run has several (the first of these it has, else its last).
PREFERRED_METHODS = ("umap", "tsne", "pca")


def default_method(methods: list[str]) -> str:
    """The map to show first among ``methods`` (not empty)."""
    return next((m for m in PREFERRED_METHODS if m in methods), methods[-1])


def overview_rows(n: int, max_points: int, seed: int = 0) -> np.ndarray | None:
    """A fixed random subset of ``max_points`` rows (sorted) when ``n`` is larger, else None.

    Always the same rows for the same (n, max_points, seed), so a patch (new colours) of an
    overview map lines up with the points it was built with.
    """
    if n <= max_points:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def map_coords(tiles: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 x, y of a map (compact on the wire: plotly sends them as typed arrays)."""
    return (
        tiles[f"{method}_x"].to_numpy(dtype=np.float32),
        tiles[f"{method}_y"].to_numpy(dtype=np.float32),
    )


def explained_variance(run: EmbeddingsRun) -> list[float] | None:
    """PCA's explained variance ratios: from the sweep's diagnostics, the manifest's ``reduce``
    section or ``reducers/pca.npz`` (plain arrays, never a pickle)."""
    found = _find_key((run.sweep or {}).get("diagnostics") or {}, "explained_variance_ratio")
    if found is None:
        found = _find_key(run.manifest.get("reduce") or {}, "explained_variance_ratio")
    if found is None:
        found = artifacts.read_pca_variance(run)
    if found is None:
        return None
    try:
        return [float(v) for v in np.asarray(found, dtype=float).ravel()]
    except (TypeError, ValueError):
        return None


def _find_key(obj: Any, key: str, depth: int = 0) -> Any:
    if depth > 4:
        return None
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for value in obj.values():
            found = _find_key(value, key, depth + 1)
            if found is not None:
                return found
    return None


def axis_titles(method: str, variance: list[float] | None = None) -> tuple[str, str]:
    """Axis titles such as "PCA 1 (23 % var.)" or "t-SNE 1"."""
    name = theme.method_label(method)
    titles = []
    for i in (0, 1):
        title = f"{name} {i + 1}"
        if method == "pca" and variance and len(variance) > i and math.isfinite(variance[i]):
            title += f" ({variance[i] * 100:.0f} % var.)"
        titles.append(title)
    return titles[0], titles[1]


# --------------------------------------------------------------------------- colouring


@dataclass
class ColourSpec:
    """How to colour the points of a map: integer codes + palette, or values + colour scale."""

    key: str
    title: str
    kind: str  # "categorical" | "continuous"
    values: np.ndarray  # int16 codes or float32 values (NaN = no value)
    categories: list[str] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    cmin: float = 0.0
    cmax: float = 1.0
    colorscale: str = "Viridis"
    tickformat: str = ".2f"

    def take(self, rows: np.ndarray) -> ColourSpec:
        """The same colouring for a subset of the tiles (legend counts unchanged)."""
        return replace(self, values=self.values[rows])


def damage_columns(tiles: pd.DataFrame) -> list[str]:
    """The tile table's ``dmg_*`` count columns."""
    return [c for c in tiles.columns if c.startswith("dmg_")]


def damage_name(column: str) -> str:
    """``dmg_no_damage`` → ``no-damage``."""
    return column[4:].replace("_", "-")


def dominant_damage(tiles: pd.DataFrame) -> np.ndarray:
    """Per tile, its most frequent damage class ("none" when no building has a damage label)."""
    cols = damage_columns(tiles)
    if not cols:
        return np.full(len(tiles), "none", dtype=object)
    counts = tiles[cols].fillna(0).to_numpy(dtype=float)
    names = np.array([damage_name(c) for c in cols], dtype=object)
    dom = names[counts.argmax(axis=1)] if len(tiles) else np.array([], dtype=object)
    return np.where(counts.sum(axis=1) > 0, dom, "none").astype(object)


def colour_options(tiles: pd.DataFrame) -> list[dict[str, str]]:
    """Dropdown options for "colour by", only for the columns this run has."""
    out = []
    for key, (label, _) in COLOUR_OPTIONS.items():
        if key == "damage":
            present = bool(damage_columns(tiles))
        else:
            present = key in tiles and tiles[key].notna().any()
        if present:
            out.append({"label": label, "value": key})
    return out


def colour_spec(
    tiles: pd.DataFrame, key: str, labels: np.ndarray | None = None
) -> ColourSpec:
    """The colouring of ``key`` (``labels`` overrides the stored cluster column)."""
    title, kind = COLOUR_OPTIONS.get(key, (key, "continuous"))
    if key == "cluster" and labels is not None:
        raw = np.asarray(labels)
    elif key == "damage":
        raw = dominant_damage(tiles)
    elif key in tiles:
        raw = tiles[key].to_numpy()
    else:
        raise KeyError(f"unknown colour column {key!r}")
    if kind == "categorical":
        return _categorical(key, title, raw)
    values = np.asarray(raw, dtype=np.float32)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colorscale, tickformat = "Viridis", ".2f"
    if key in ("true_fraction", "pred_fraction", "iou"):
        lo, hi = 0.0, max(hi, 1e-6) if key != "iou" else 1.0
        tickformat = ".0%" if key != "iou" else ".2f"
    if key == "ood_score":
        lo, hi, colorscale, tickformat = 0.0, 100.0, "Cividis", ".0f"
    if key == "silhouette":
        bound = max(abs(lo), abs(hi), 1e-6)
        lo, hi, colorscale = -bound, bound, "RdBu"
    if hi <= lo:
        hi = lo + 1.0
    return ColourSpec(key, title, "continuous", values, cmin=lo, cmax=hi,
                      colorscale=colorscale, tickformat=tickformat)


def _categorical(key: str, title: str, raw: np.ndarray) -> ColourSpec:
    import pandas as pd  # lazily: the pages import this module, a run's table brings pandas

    series = pd.Series(raw, dtype=object)
    if key == "cluster":
        numeric = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        names = np.array(
            [f"Cluster {int(v)}" if np.isfinite(v) else "unknown" for v in numeric], dtype=object
        )
        present = sorted({int(v) for v in numeric[np.isfinite(numeric)]})
        order = [f"Cluster {v}" for v in present]
    else:
        names = series.where(series.notna(), "unknown").astype(str).to_numpy(dtype=object)
        counts = pd.Series(names).value_counts()
        fixed = FIXED_ORDERS.get(key, ())
        order = [c for c in fixed if c in counts.index]
        order += [c for c in counts.index if c not in order and c != "unknown"]
    if "unknown" in set(names) and "unknown" not in order:
        order.append("unknown")
    if len(order) > MAX_CATEGORIES:  # fold the rarest into "other"
        keep = order[: MAX_CATEGORIES - 1]
        names = np.where(np.isin(names, keep), names, "other").astype(object)
        order = [*keep, "other"]
    lookup = {c: i for i, c in enumerate(order)}
    codes = np.fromiter((lookup[v] for v in names), dtype=np.int16, count=len(names))
    counts_list = np.bincount(codes, minlength=len(order)).tolist() if len(order) else []
    colours = [theme.category_colour(key, c, i) for i, c in enumerate(order)]
    return ColourSpec(key, title, "categorical", codes, categories=order, colours=colours,
                      counts=counts_list, cmin=-0.5, cmax=len(order) - 0.5)


# --------------------------------------------------------------------------- tiles


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def tile_record(tiles: pd.DataFrame, row: int) -> dict[str, Any]:
    """One tile's id, metadata, metrics and damage counts (JSON-friendly, NaN → None)."""
    rec = tiles.iloc[int(row)]
    out: dict[str, Any] = {"tile_id": str(rec["tile_id"]), "row": int(row)}
    for col in ("scene_id", "split", "phase", "disaster", "source", "ood_nearest"):
        if col in tiles and rec[col] is not None and rec[col] == rec[col]:
            out[col] = str(rec[col])
    for col in ("iou", "precision", "recall", "f1", "true_fraction", "pred_fraction",
                "silhouette", "ood_score"):
        if col in tiles:
            out[col] = _num(rec[col])
    for col in ("building_count", "pred_building_count", "cluster"):
        if col in tiles:
            v = _num(rec[col])
            out[col] = int(v) if v is not None else None
    out["damage"] = {
        damage_name(c): int(_num(rec[c]) or 0) for c in damage_columns(tiles)
    }
    return out


def nearest(
    vec: Vectors, query: np.ndarray, k: int = 8, metric: str = "cosine",
    exclude: int | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` stored rows nearest ``query`` in the original embedding space (not the 2-D map),
    as (row, score) pairs, nearest first (``app.ml.neighbours.nearest_rows`` over the run's
    vectors with their precomputed norms). Row ``exclude`` (the query's own) is left out."""
    return nearest_rows(vec.data, query, k, metric=metric, norms=vec.norms, sqnorms=vec.sqnorms,
                        exclude=exclude)


def nearest_neighbours(
    vec: Vectors, row: int, k: int = 8, metric: str = "cosine"
) -> list[tuple[int, float]]:
    """The ``k`` rows nearest stored row ``row`` (itself left out); see :func:`nearest`."""
    return nearest(vec, vec.data[row], k, metric, exclude=row)


def page_of(items: list, page: int, per_page: int = PER_PAGE) -> tuple[list, int, int]:
    """(items on the page, the page clamped to range, number of pages ≥ 1)."""
    n_pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(0, int(page or 0)), n_pages - 1)
    return items[page * per_page:(page + 1) * per_page], page, n_pages


