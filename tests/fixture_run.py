"""A small, format-valid embeddings run for the dashboard's tests (no network, no TensorFlow).

``make_fixture_run(root, n=300, seed=0)`` writes ``root/<run_id>/`` through the writers of
``app.artifacts`` (the ones ``embed`` and ``reduce`` use): manifest, tiles.parquet, vectors.npy,
thumbs/ (real JPEG/PNG files: coloured noise tiles with drawn "buildings"), images/, and reduced/
(coords, sweep.json, labels.npy); it then checks that ``EmbeddingsRun.file_for`` finds every kind
of image it wrote. Vectors are
random but clustered, the 2-D maps are derived from them, and the sweep is a real K-means sweep,
so every page has something meaningful to show. Open it with
``EmbeddingsRun.open(run_id, root, check_model=False)`` (no model store entry is written).

``images=False`` skips the image files (for payload measurements at 10^4-10^5 tiles).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn import metrics
from sklearn.cluster import KMeans

from app import artifacts
from app.artifacts import THUMB_KINDS, EmbeddingsRun

FIXTURE_RUN_ID = "fixture-run"
DAMAGE = ("no_damage", "minor_damage", "major_damage", "destroyed", "un_classified")
DISASTERS = ("santa-rosa-wildfire", "guatemala-volcano", "midwest-flooding")
N_CENTRES = 4
DIMS = 32
IMAGE_SIZE = 96
THUMB_SIZE = 64
SWEEP_K = (2, 3, 4, 5, 6)
_HUES = np.array(
    [[70, 110, 60], [150, 130, 95], [95, 105, 120], [60, 90, 110], [120, 80, 70]], dtype=float
)


def _masks(rng: np.random.Generator, centre: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A truth mask of a few rectangles and a prediction that shifts, drops or adds some."""
    truth = np.zeros((size, size), bool)
    pred = np.zeros((size, size), bool)
    n_buildings = int(rng.integers(0, 2 + 2 * centre))
    for _ in range(n_buildings):
        w, h = (int(v) for v in rng.integers(size // 12, size // 4, 2))
        x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
        truth[y:y + h, x:x + w] = True
        if rng.random() < 0.85:  # detected, a little shifted
            dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
            pred[max(0, y + dy):y + h + dy, max(0, x + dx):x + w + dx] = True
    if rng.random() < 0.25:  # a false positive
        x, y = (int(v) for v in rng.integers(0, size - 12, 2))
        pred[y:y + 10, x:x + 10] = True
    return truth, pred


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    denom = tp + fp + fn
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if denom else 1.0,
        "iou": tp / denom if denom else 1.0,
        "tp": tp, "fp": fp, "fn": fn,
        "true_fraction": float(truth.mean()),
        "pred_fraction": float(pred.mean()),
    }


def _write_images(out: Path, tile_id: str, rng: np.random.Generator, centre: int,
                  truth: np.ndarray, pred: np.ndarray) -> None:
    size = truth.shape[0]
    base = _HUES[centre % len(_HUES)]
    img = base + rng.normal(0, 18, (size, size, 3))
    img[truth] = np.array([200, 190, 175]) + rng.normal(0, 10, (int(truth.sum()), 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    artifacts.save_tile_image(out, "image", tile_id, Image.fromarray(img))
    thumb = Image.fromarray(img).resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    artifacts.save_tile_image(out, "thumb", tile_id, thumb)
    t_small = np.asarray(Image.fromarray(truth.astype(np.uint8) * 255).resize(
        (THUMB_SIZE, THUMB_SIZE), Image.Resampling.NEAREST)) > 127
    p_small = np.asarray(Image.fromarray(pred.astype(np.uint8) * 255).resize(
        (THUMB_SIZE, THUMB_SIZE), Image.Resampling.NEAREST)) > 127
    artifacts.save_tile_image(out, "true", tile_id, Image.fromarray(t_small.astype(np.uint8) * 255))
    artifacts.save_tile_image(out, "pred", tile_id, Image.fromarray(p_small.astype(np.uint8) * 255))
    overlay = np.asarray(thumb).astype(np.float32)
    for sel, colour in ((t_small & p_small, (240, 240, 240)), (~t_small & p_small, (213, 94, 0)),
                        (t_small & ~p_small, (0, 114, 178))):
        overlay[sel] = overlay[sel] * 0.45 + np.array(colour) * 0.55
    artifacts.save_tile_image(out, "overlay", tile_id, Image.fromarray(overlay.astype(np.uint8)))


def _agreement_rows(labels: np.ndarray, truth: np.ndarray, ks: tuple, sil: list,
                    inertia: list) -> list[dict]:
    """Rows like ``app.ml.cluster.agreement_table``: each cluster votes its majority label,
    macro precision / recall of that mapping, accuracy, ARI, NMI."""
    classes, y = np.unique(truth, return_inverse=True)
    rows = []
    for i, k in enumerate(ks):
        lab = labels[i]
        guess = np.zeros_like(y)
        for c in np.unique(lab):
            guess[lab == c] = np.bincount(y[lab == c], minlength=len(classes)).argmax()
        rows.append({
            "k": k, "silhouette": sil[i], "inertia": inertia[i],
            "precision": float(metrics.precision_score(y, guess, average="macro",
                                                       zero_division=0)),
            "recall": float(metrics.recall_score(y, guess, average="macro", zero_division=0)),
            "accuracy": float(metrics.accuracy_score(y, guess)),
            "ari": float(metrics.adjusted_rand_score(y, lab)),
            "nmi": float(metrics.normalized_mutual_info_score(y, lab)),
        })
    return rows


def _sweep(vectors: np.ndarray, seed: int, truths: dict[str, np.ndarray]) -> tuple[dict, np.ndarray]:
    """A K-means sweep in the format of ``reduce``'s sweep.json (+ labels.npy)."""
    inertia, sil, labels = [], [], []
    sample = min(len(vectors), 2000)
    for k in SWEEP_K:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
        inertia.append(float(km.inertia_))
        sil.append(float(metrics.silhouette_score(vectors, km.labels_, sample_size=sample,
                                          random_state=seed)))
        labels.append(km.labels_.astype(np.int32))
    stacked = np.stack(labels)
    best = SWEEP_K[int(np.argmax(sil))]
    sweep = {
        "k": list(SWEEP_K), "inertia": inertia, "silhouette": sil, "best_k": best,
        "sizes": {str(k): np.bincount(stacked[i], minlength=k).tolist()
                  for i, k in enumerate(SWEEP_K)},
        "params": {"algorithm": "kmeans", "n_init": 3, "random_state": seed,
                   "silhouette_sample": 2000, "n_samples": len(vectors)},
        "chosen_k": best,
        "agreement": {name: _agreement_rows(stacked, truth, SWEEP_K, sil, inertia)
                      for name, truth in truths.items()},
        "agreement_skipped": [],
    }
    return sweep, stacked


def make_fixture_run(root: Path, n: int = 300, seed: int = 0, *, run_id: str = FIXTURE_RUN_ID,
                     images: bool = True) -> str:
    """Write a format-valid embeddings run under ``root/<run_id>`` and return its run id."""
    rng = np.random.default_rng(seed)
    out = Path(root) / run_id
    artifacts.make_tile_dirs(out)

    centres = rng.normal(0, 3.0, (N_CENTRES, DIMS))
    centre_of = rng.integers(0, N_CENTRES, n)
    vectors = (centres[centre_of] + rng.normal(0, 1.0, (n, DIMS))).astype(np.float16)

    rows = []
    size = IMAGE_SIZE
    for i in range(n):
        c = int(centre_of[i])
        scene = i // 4
        phase = "pre" if scene % 2 == 0 else "post"
        tile_id = f"fx_s{scene:05d}_{phase}_t{i % 4}"
        truth, pred = _masks(rng, c, size)
        scores = _scores(truth, pred)
        buildings = int(round(scores["true_fraction"] * 40))
        dmg = dict.fromkeys(DAMAGE, 0)
        if phase == "post" and buildings:
            mix = rng.multinomial(buildings, [0.55, 0.15, 0.1, 0.15, 0.05])
            dmg = dict(zip(DAMAGE, (int(v) for v in mix), strict=True))
        rows.append({
            "tile_id": tile_id, "source": "synthetic", "scene_id": f"fx_s{scene:05d}",
            "group": f"loc{scene // 2:05d}", "split": ("train", "val", "test")[scene % 3],
            "x": (i % 2) * size, "y": (i % 4 // 2) * size, "size": size, "phase": phase,
            "disaster": DISASTERS[c % len(DISASTERS)], **scores,
            "pred_building_count": int(np.count_nonzero(pred[::8, ::8]) > 0) * (1 + c),
            "building_count": buildings, **{f"dmg_{k}": v for k, v in dmg.items()},
        })
        if images:
            _write_images(out, tile_id, rng, c, truth, pred)
    tiles = pd.DataFrame(rows)
    artifacts.write_tiles_table(out, tiles)
    artifacts.write_vectors(out, vectors)

    x = vectors.astype(np.float64)
    x -= x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    pca = x @ vt[:2].T
    ratio = (s**2 / (s**2).sum())[:2]
    jitter = rng.normal(0, 0.4, (n, 2))
    tsne = np.column_stack([pca[:, 1], -pca[:, 0]]) * 3 + jitter * 3
    umap = np.tanh(pca / np.abs(pca).max()) * 8 + jitter

    truths = {
        "has_building": np.where(tiles["true_fraction"].to_numpy() > 0.01, "building",
                                 "no-building"),
        "phase": tiles["phase"].to_numpy(dtype=str),
    }
    sweep, labels = _sweep(x, seed, truths)
    sweep["diagnostics"] = {"pca": {"explained_variance_ratio": [float(v) for v in ratio]}}
    chosen = sweep["k"].index(sweep["chosen_k"])
    coords = pd.DataFrame({
        "tile_id": tiles["tile_id"],
        "pca_x": pca[:, 0].astype(np.float32), "pca_y": pca[:, 1].astype(np.float32),
        "tsne_x": tsne[:, 0].astype(np.float32), "tsne_y": tsne[:, 1].astype(np.float32),
        "umap_x": umap[:, 0].astype(np.float32), "umap_y": umap[:, 1].astype(np.float32),
        "cluster": labels[chosen],
        "silhouette": metrics.silhouette_samples(x, labels[chosen]).astype(np.float32)
        if n <= 5000 else np.full(n, np.nan, np.float32),
    })
    reduced_files = artifacts.write_reduced(out, coords, sweep, labels, {})

    manifest = {
        "run_id": run_id, "created": "2024-01-01T00:00:00+00:00",
        "model_run": "fixture-model", "model_sha256": "0" * 64, "layer": "bottleneck",
        "representation": "gap", "dataset": {"name": "fixture", "source": "synthetic"},
        "counts": {"tiles": n, "dims": DIMS}, "params": {"seed": seed}, "versions": {},
        "files": artifacts.hash_files(out),
        "reduce": {
            "params": {"methods": ["pca", "tsne", "umap"], "random_state": seed,
                       "k_values": list(SWEEP_K)},
            "chosen_k": sweep["chosen_k"], "best_k": sweep["best_k"], "files": reduced_files,
        },
    }
    artifacts.write_embeddings_manifest(out, manifest)
    if images:
        _check_files(Path(root), run_id, str(tiles["tile_id"].iat[0]))
    return run_id


def _check_files(root: Path, run_id: str, tile_id: str) -> None:
    """Fail loudly if the artifact format's file names drifted from what this fixture writes."""
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    missing = [k for k in THUMB_KINDS if run.file_for(k, tile_id) is None]
    if missing:
        raise AssertionError(
            f"tests/fixture_run.py writes no file that EmbeddingsRun.file_for finds for kinds "
            f"{missing}: update _write_images to the format in app/artifacts.py."
        )


_built: dict[tuple[str, int, int], str] = {}


def shared_fixture_run(root: Path, n: int = 300, seed: int = 0) -> str:
    """``make_fixture_run`` once per process and folder (test modules share one build)."""
    key = (str(root), n, seed)
    if key not in _built:
        _built[key] = make_fixture_run(root, n=n, seed=seed)
    return _built[key]


if __name__ == "__main__":  # python -m tests.fixture_run DIR [N] [--no-images]
    target = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 300
    name = make_fixture_run(target, n=count, images="--no-images" not in sys.argv,
                            run_id=f"{FIXTURE_RUN_ID}-{count}" if count != 300 else FIXTURE_RUN_ID)
    print(target / name)

