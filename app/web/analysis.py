"""Plain functions over a run's tile table and vectors, for the explore and clusters pages.

Everything here is small numpy / pandas / scikit-learn work on stored artifacts (no network, no
Dash): colour columns, nearest neighbours in the original embedding space, paging, CSV export,
cluster labels for any k, per-sample silhouettes and per-cluster summaries. Callbacks call the
``cached_*`` wrappers, which memoize on (run id, run version, k) in the shared flask-caching cache.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from app.web import state
from app.web.cache import cache

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from app.artifacts import EmbeddingsRun

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("pca", "tsne", "umap")
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
PER_PAGE = 24
MAX_CATEGORIES = 20
#: At most this many tiles enter a per-sample silhouette computed on request (O(n²)).
SILHOUETTE_SAMPLE = 4000
K_RANGE = tuple(range(2, 11))

#: Categorical palette (Tableau 10 + 10 lighter companions); "other"/"unknown" are grey.
PALETTE: tuple[str, ...] = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
    "#ff9da7", "#2f4b7c", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a", "#86bcb6", "#d4a6c8",
    "#f1ce63", "#d7b5a6", "#499894", "#bab0ac",
)
GREY = "#b8bec6"
DAMAGE_ORDER = ("no-damage", "minor-damage", "major-damage", "destroyed", "un-classified", "none")
DAMAGE_COLOURS = {
    "no-damage": "#59a14f", "minor-damage": "#edc948", "major-damage": "#f28e2b",
    "destroyed": "#e15759", "un-classified": "#9c755f", "none": "#d5d9de",
}
FIXED_ORDERS: dict[str, tuple[str, ...]] = {
    "phase": ("pre", "post"),
    "split": ("train", "val", "test"),
    "damage": DAMAGE_ORDER,
}

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
}
CSV_COLUMNS = (
    "tile_id", "scene_id", "split", "phase", "disaster", "source", "cluster", "iou", "precision",
    "recall", "f1", "true_fraction", "pred_fraction", "building_count",
)


# --------------------------------------------------------------------------- maps


def available_methods(tiles: pd.DataFrame) -> list[str]:
    """The 2-D maps a run has (both columns present and not all missing)."""
    out = []
    for m in METHODS:
        cx, cy = f"{m}_x", f"{m}_y"
        if cx in tiles and cy in tiles and tiles[cx].notna().any():
            out.append(m)
    return out


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
        path = run.reducer_dir() / "pca.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as npz:
                    if "explained_variance_ratio" in npz:
                        found = npz["explained_variance_ratio"]
            except (OSError, ValueError):
                found = None
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
    name = METHOD_LABELS.get(method, method)
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
    if key == "silhouette":
        bound = max(abs(lo), abs(hi), 1e-6)
        lo, hi, colorscale = -bound, bound, "RdBu"
    if hi <= lo:
        hi = lo + 1.0
    return ColourSpec(key, title, "continuous", values, cmin=lo, cmax=hi,
                      colorscale=colorscale, tickformat=tickformat)


def _categorical(key: str, title: str, raw: np.ndarray) -> ColourSpec:
    import pandas as pd

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
    colours = [_category_colour(key, c, i) for i, c in enumerate(order)]
    return ColourSpec(key, title, "categorical", codes, categories=order, colours=colours,
                      counts=counts_list, cmin=-0.5, cmax=len(order) - 0.5)


def _category_colour(key: str, category: str, i: int) -> str:
    if category in ("unknown", "other"):
        return GREY
    if key == "damage":
        return DAMAGE_COLOURS.get(category, PALETTE[i % len(PALETTE)])
    if key == "cluster":
        return cluster_colour(int(category.split()[-1]))
    return PALETTE[i % len(PALETTE)]


def cluster_colour(cluster: int) -> str:
    """The colour of a cluster number, the same on every map, card and plot."""
    return PALETTE[int(cluster) % len(PALETTE)]


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
    for col in ("scene_id", "split", "phase", "disaster", "source"):
        if col in tiles and rec[col] is not None and rec[col] == rec[col]:
            out[col] = str(rec[col])
    for col in ("iou", "precision", "recall", "f1", "true_fraction", "pred_fraction",
                "silhouette"):
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


def nearest_neighbours(
    vec: state.Vectors, row: int, k: int = 8, metric: str = "cosine"
) -> list[tuple[int, float]]:
    """The ``k`` rows nearest ``row`` in the original embedding space (not the 2-D map).

    Returns (row, score) pairs, nearest first: cosine similarity for ``metric="cosine"``,
    Euclidean distance for ``metric="euclidean"``. The tile itself is left out.
    """
    data, norms = vec.data, vec.norms
    n = data.shape[0]
    k = max(0, min(int(k), n - 1))
    if k == 0:
        return []
    q = data[row]
    dots = data @ q
    if metric == "euclidean":
        d2 = vec.sqnorms - 2 * dots + float(vec.sqnorms[row])
        score = np.sqrt(np.maximum(d2, 0.0))
        key = score.copy()
    elif metric == "cosine":
        score = dots / (norms * norms[row])
        key = -score
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")
    key[row] = np.inf
    part = np.argpartition(key, k)[:k] if k < n else np.arange(n)
    part = part[np.argsort(key[part], kind="stable")]
    return [(int(i), float(score[i])) for i in part if i != row][:k]


def page_of(items: list, page: int, per_page: int = PER_PAGE) -> tuple[list, int, int]:
    """(items on the page, the page clamped to range, number of pages ≥ 1)."""
    n_pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(0, int(page or 0)), n_pages - 1)
    return items[page * per_page:(page + 1) * per_page], page, n_pages


def known_ids(index: dict[str, int], ids: Any) -> list[str]:
    """The ids of a browser-supplied list that the run knows, deduplicated, in order."""
    if not isinstance(ids, list):
        return []
    seen: set[str] = set()
    out = []
    for tid in ids:
        if isinstance(tid, str) and tid in index and tid not in seen:
            seen.add(tid)
            out.append(tid)
    return out


def selection_csv(tiles: pd.DataFrame, index: dict[str, int], ids: list[str]) -> str:
    """CSV of the selected tiles: tile_id first, then metadata and metrics."""
    rows = [index[t] for t in known_ids(index, ids)]
    cols = [c for c in CSV_COLUMNS if c in tiles]
    buf = io.StringIO()
    tiles.iloc[rows][cols].to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue()


# --------------------------------------------------------------------------- clusters


def k_choices(run: EmbeddingsRun) -> list[int]:
    """k values offered: 2..10 plus every k of the stored sweep."""
    ks = set(K_RANGE)
    if run.sweep:
        ks |= {int(k) for k in run.sweep.get("k", [])}
    return sorted(ks)


def default_k(run: EmbeddingsRun) -> int:
    """The run's chosen k (else its best k, else 4)."""
    sweep = run.sweep or {}
    for key in ("chosen_k", "best_k"):
        if isinstance(sweep.get(key), int):
            return int(sweep[key])
    if "cluster" in run.tiles:
        return int(run.tiles["cluster"].nunique())
    return 4


def labels_for_k(run: EmbeddingsRun, k: int) -> tuple[np.ndarray, str]:
    """K-means labels for ``k`` and where they came from.

    Stored sweep labels first, then the stored ``cluster`` column (chosen k), then
    ``app.ml.apply.recluster`` when that exists, else a seeded scikit-learn K-means.
    """
    k = int(k)
    sweep, labels = run.sweep or {}, run.sweep_labels
    ks = [int(v) for v in sweep.get("k", [])]
    if labels is not None and k in ks and ks.index(k) < len(labels):
        return np.asarray(labels[ks.index(k)], dtype=np.int32), "stored sweep"
    if "cluster" in run.tiles and sweep.get("chosen_k") == k:
        return run.tiles["cluster"].to_numpy(dtype=np.int32), "stored"
    try:
        from app.ml.apply import recluster  # imported on demand: may be heavy
    except ImportError:
        recluster = None
    if recluster is not None:
        result = recluster(run, k)
        if isinstance(result, dict):
            result = result.get("labels")
        elif isinstance(result, tuple):
            result = result[0]
        return np.asarray(result, dtype=np.int32), "re-clustered"
    from sklearn.cluster import KMeans

    seed = int(sweep.get("random_state", 0) or 0)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed)
    return km.fit_predict(state.vectors(run).data).astype(np.int32), "re-clustered"


def silhouette_values(
    run: EmbeddingsRun, labels: np.ndarray, k: int, max_samples: int = SILHOUETTE_SAMPLE,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(rows, per-sample silhouette, exact) for these labels.

    The stored ``silhouette`` column when ``labels`` are the stored clusters (its finite rows:
    ``reduce`` scores a sample of large runs); otherwise computed on the vectors (Euclidean,
    like the sweep) for at most the sweep's silhouette sample size (else ``max_samples``) tiles
    drawn with the sweep's seed, since it costs O(n²). ``exact`` is True when every tile is in.
    """
    tiles = run.tiles
    n = len(labels)
    if "silhouette" in tiles and "cluster" in tiles and np.array_equal(
        tiles["cluster"].to_numpy(), labels
    ):
        stored = tiles["silhouette"].to_numpy(dtype=np.float64)
        rows = np.flatnonzero(np.isfinite(stored))
        if rows.size >= 2:
            return rows, stored[rows].astype(np.float32), rows.size == n
    kparams = (run.sweep or {}).get("params") or {}
    sample = kparams.get("silhouette_sample") or max_samples
    sample = int(min(sample, max_samples))
    if seed is None:
        seed = int(kparams.get("random_state", (run.sweep or {}).get("random_state", 0)) or 0)
    if len(np.unique(labels)) < 2:
        return np.arange(n), np.zeros(n, np.float32), True
    data = state.vectors(run).data
    try:
        from app.ml.cluster import silhouette_per_sample  # numpy / scikit-learn only

        values = silhouette_per_sample(data, labels, sample=sample if n > sample else None,
                                       random_state=seed)
    except ImportError:  # pragma: no cover - the same computation, inline
        from sklearn.metrics import silhouette_samples

        values = np.full(n, np.nan)
        idx = np.arange(n) if n <= sample else np.random.default_rng(seed).permutation(n)[:sample]
        values[idx] = silhouette_samples(data[idx], labels[idx])
    except ValueError:  # a sample with one cluster: silhouette undefined
        return np.arange(0), np.zeros(0, np.float32), False
    rows = np.flatnonzero(np.isfinite(values))
    return rows, values[rows].astype(np.float32), rows.size == n


def cluster_summaries(
    tiles: pd.DataFrame, labels: np.ndarray, data: np.ndarray, n_nearest: int = 4
) -> list[dict[str, Any]]:
    """One dict per cluster: size, share, mean metrics, damage mix, and member rows ordered by
    distance to the centroid in the embedding space (``order``; ``nearest`` = the first few)."""
    out = []
    n = len(labels)
    dmg_cols = damage_columns(tiles)
    for c in sorted(int(v) for v in np.unique(labels)):
        members = np.flatnonzero(labels == c)
        sub = tiles.iloc[members]
        centroid = data[members].mean(axis=0)
        dist = np.linalg.norm(data[members] - centroid, axis=1)
        order = members[np.argsort(dist, kind="stable")]
        means = {}
        for col in ("true_fraction", "pred_fraction", "precision", "recall", "iou", "f1"):
            if col in sub:
                vals = sub[col].to_numpy(dtype=float)
                means[col] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
        damage = {damage_name(col): int(sub[col].fillna(0).sum()) for col in dmg_cols}
        out.append({
            "cluster": c, "size": int(len(members)), "share": len(members) / max(n, 1),
            "means": means, "damage": damage, "order": order.tolist(),
            "nearest": [str(tiles["tile_id"].iat[i]) for i in order[:n_nearest]],
        })
    return out


def has_building_truth(tiles: pd.DataFrame, threshold: float = 0.01) -> np.ndarray | None:
    """Per tile True/False "has a building" from the truth mask, NaN-free rows only (else None)."""
    if "true_fraction" not in tiles:
        return None
    frac = tiles["true_fraction"].to_numpy(dtype=float)
    if not np.isfinite(frac).any():
        return None
    return np.where(np.isfinite(frac), frac > threshold, np.nan)


LABEL_NAMES = {
    "has_building": "has building", "phase": "phase (pre / post)", "disaster": "disaster",
    "disaster_type": "disaster type", "split": "split", "dominant_damage": "dominant damage",
}


def agreement_tables(run: EmbeddingsRun) -> dict[str, list[dict[str, Any]]]:
    """Per truth label, one row per k: silhouette and how well clusters match that label.

    ``sweep["agreement"]`` as ``reduce`` stores it (``{label: [{k, silhouette, inertia,
    precision, recall, accuracy, ari, nmi}, ...]}``, each cluster mapped to its majority label,
    macro precision / recall), or a plain list of rows. Without it, computed here from the stored
    sweep labels against "has building" (true building fraction > 1 %).
    """
    sweep = run.sweep or {}
    stored = sweep.get("agreement")
    if isinstance(stored, list) and stored and all(isinstance(r, dict) for r in stored):
        return {str(stored[0].get("label", "label")): [dict(r) for r in stored]}
    if isinstance(stored, dict) and stored:
        out = {str(name): [dict(r) for r in rows] for name, rows in stored.items()
               if isinstance(rows, list) and all(isinstance(r, dict) for r in rows)}
        if out:
            return out
    rows = _computed_agreement(run)
    return {"has_building": rows} if rows else {}


def _computed_agreement(run: EmbeddingsRun) -> list[dict[str, Any]]:
    sweep = run.sweep or {}
    labels = run.sweep_labels
    truth = has_building_truth(run.tiles)
    ks = [int(v) for v in sweep.get("k", [])]
    if labels is None or truth is None or not ks:
        return []
    from sklearn.metrics import precision_score, recall_score

    known = np.isfinite(truth)
    y = truth[known].astype(int)
    sil = list(sweep.get("silhouette", []))
    rows = []
    for i, k in enumerate(ks):
        lab = np.asarray(labels[i])[known]
        guess = np.zeros(len(lab), int)
        for c in np.unique(lab):
            m = lab == c
            guess[m] = int(y[m].mean() > 0.5)  # majority label, ties → "no building"
        rows.append({
            "k": k,
            "silhouette": _num(sil[i]) if i < len(sil) else None,
            "precision": float(precision_score(y, guess, average="macro", zero_division=0)),
            "recall": float(recall_score(y, guess, average="macro", zero_division=0)),
        })
    return rows


# --------------------------------------------------------------------------- cached wrappers


@cache.memoize()
def cached_labels(run_id: str, version: str, k: int) -> tuple[np.ndarray, str] | None:
    """``labels_for_k`` memoized per (run id, run version, k)."""
    run = state.get_run(run_id)
    return None if run is None else labels_for_k(run, k)


@cache.memoize()
def cached_silhouette(run_id: str, version: str, k: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``silhouette_values`` memoized per (run id, run version, k)."""
    run = state.get_run(run_id)
    labelled = cached_labels(run_id, version, k)
    if run is None or labelled is None:
        return None
    return silhouette_values(run, labelled[0], k)


@cache.memoize()
def cached_summaries(run_id: str, version: str, k: int) -> list[dict[str, Any]] | None:
    """``cluster_summaries`` memoized per (run id, run version, k)."""
    run = state.get_run(run_id)
    labelled = cached_labels(run_id, version, k)
    if run is None or labelled is None:
        return None
    return cluster_summaries(run.tiles, labelled[0], state.vectors(run).data)
