"""``python -m bench.ood``: does the out-of-distribution guard tell real imagery from synthetic?

With the shipped synthetic model (``demo-light``), three tile datasets are embedded (bottleneck,
``avgmax`` pooling = [GAP, GMP], so GAP is its first half and one pass serves both
representations):

- ``demo-synthetic``: the demo's own dataset (20 locations, seed 0), rebuilt deterministically;
  its train split is the guard's index, its val + test tiles the calibration;
- ``synth-new``: synthetic scenes of locations the model never saw (another seed): in
  distribution, never seen, the negatives;
- ``xbd``: the real tiles of ``--xbd`` (``../shared/data/xbd``): the positives.

For every representation (GAP, GAP+GMP) × transform (none, log: ``log1p(x / (0.1 × mean))``) ×
distance (cosine, Euclidean, Mahalanobis) × k it
reports the AUROC of the guard's score for "real vs synthetic" (tiles, and scenes scored like an
upload: the mean of their tiles' distances), the share of each flagged above the 99th
percentile, and the AUROC of the score for "this tile's F1 < 0.5" (pooled, and within xBD).
Everything it makes stays under ``--work`` (never in the repository: it is made from xBD).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log

MODEL_RUN = "demo-light"
DATASETS = {
    "demo-synthetic": ["--source", "synthetic", "--n-locations", "20", "--seed", "0"],
    "synth-new": ["--source", "synthetic", "--n-locations", "6", "--seed", "7"],
}
REPRESENTATIONS = ("gap", "avgmax")
METRICS = ("cosine", "euclidean", "mahalanobis")
KS = (5, 10)
TRANSFORMS = ("none", "log")


class Embedded:
    """Vectors ([GAP, GMP] of the bottleneck) and per-tile table (tile_id, scene_id, split,
    f1) of a dataset's tiles, as the bench needs them."""

    def __init__(self, vectors: np.ndarray, tiles: Any) -> None:
        self.vectors, self.tiles = vectors, tiles

    def vectors_float32(self) -> np.ndarray:
        return self.vectors.astype(np.float32)


def _embed(model: Any, dataset: Path, cache: Path, scenes: int | None, seed: int) -> Embedded:
    """Embed a dataset's tiles (a seeded sample of ``scenes`` scenes when given) with the model:
    avgmax vectors and each tile's F1 from the same pass; cached in ``cache`` (an .npz)."""
    import pandas as pd

    from app.data.dataset import TileDataset
    from app.ml.extract import embed_images, feature_model, tile_metrics

    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            table = pd.DataFrame({k: npz[k] for k in ("tile_id", "scene_id", "split", "f1")})
            return Embedded(npz["vectors"], table)
    ds = TileDataset.open(dataset)
    table = ds.table
    if scenes is not None:
        names = np.sort(table["scene_id"].astype(str).unique())
        keep = np.random.default_rng(seed).choice(names, min(scenes, len(names)), replace=False)
        table = table[table["scene_id"].astype(str).isin(keep)]
    ids = table["tile_id"].astype(str).tolist()
    fm = feature_model(model, "bottleneck")
    vecs, f1 = [], []
    t0 = time.perf_counter()
    for start in range(0, len(ids), 16):
        batch = ids[start:start + 16]
        images = np.stack([ds.image(t) for t in batch]).astype(np.float32)
        vec, prob = embed_images(model, images, representation="avgmax", fmodel=fm)
        vecs.append(vec)
        for t, p in zip(batch, prob, strict=True):
            f1.append(tile_metrics(ds.mask(t), p >= 0.5)["f1"])
        log(f"{dataset.name}: {start + len(batch)}/{len(ids)} tiles "
            f"({time.perf_counter() - t0:.0f} s)")
    out = {"vectors": np.concatenate(vecs), "tile_id": np.asarray(ids, dtype=str),
           "scene_id": table["scene_id"].astype(str).to_numpy(dtype=str),
           "split": table["split"].astype(str).to_numpy(dtype=str),
           "f1": np.asarray(f1, dtype=np.float64)}
    np.savez(cache, **out)
    return _embed(model, dataset, cache, scenes, seed)


def prepare(work: Path, xbd: Path, xbd_scenes: int | None = 48, seed: int = 0) -> dict[str, Any]:
    """Make the three datasets under ``work`` (skipped when there) and embed them."""
    from app import artifacts, cli

    work.mkdir(parents=True, exist_ok=True)
    model = artifacts.load_model(MODEL_RUN)
    out = {}
    for name in ("demo-synthetic", "synth-new", "xbd"):
        ds = work / name
        if not (ds / "manifest.json").is_file():
            args = (["--source", "xbd", "--root", str(xbd)] if name == "xbd"
                    else DATASETS[name])
            if cli.main(["make-dataset", *args, "--name", name, "--out", str(ds)]) != 0:
                raise SystemExit(f"make-dataset {name} failed")
        scenes = xbd_scenes if name == "xbd" else None
        out[name] = _embed(model, ds, work / f"bench-{name}-{scenes}-{seed}.npz", scenes, seed)
    return out


def _vectors(run: Any, representation: str) -> np.ndarray:
    X = run.vectors_float32()
    return X[:, : X.shape[1] // 2] if representation == "gap" else X


def evaluate(runs: dict[str, Any], percentile: float = 99.0) -> list[dict[str, Any]]:
    """One row per (representation, metric, k) with the AUROCs and flag rates."""
    from sklearn.metrics import roc_auc_score

    from app.ml.ood import fit_ood_index

    demo, new, real = runs["demo-synthetic"], runs["synth-new"], runs["xbd"]
    rows = []
    for rep, transform, metric, k in itertools.product(REPRESENTATIONS, TRANSFORMS, METRICS, KS):
        t0 = time.perf_counter()
        index, _ = fit_ood_index(_vectors(demo, rep), demo.tiles["tile_id"].astype(str),
                                 demo.tiles["split"].astype(str), k=k, metric=metric,
                                 percentile=percentile, transform=transform)
        s_new, s_real = index.score(_vectors(new, rep)), index.score(_vectors(real, rep))
        y = np.r_[np.zeros(len(s_new.score)), np.ones(len(s_real.score))]
        score = np.r_[s_new.score, s_real.score]
        dist = np.r_[s_new.distance, s_real.distance]
        # scenes scored as uploads are: the mean of their tiles' distances
        scene_d, scene_y = [], []
        for run, label, s in ((new, 0, s_new), (real, 1, s_real)):
            scenes = run.tiles["scene_id"].astype(str).to_numpy()
            for sid in np.unique(scenes):
                scene_d.append(float(np.mean(s.distance[scenes == sid])))
                scene_y.append(label)
        scene_score = index.percentile_of(np.asarray(scene_d))
        scene_y = np.asarray(scene_y)
        f1 = np.r_[new.tiles["f1"].to_numpy(float), real.tiles["f1"].to_numpy(float)]
        ok = np.isfinite(f1)
        bad = f1 < 0.5
        real_ok = ok[len(s_new.score):]
        rows.append({
            "representation": "GAP" if rep == "gap" else "GAP+GMP", "metric": metric, "k": k,
            "transform": transform,
            "auroc_real": roc_auc_score(y, score), "auroc_real_distance": roc_auc_score(y, dist),
            "auroc_scene": roc_auc_score(scene_y, scene_score),
            "flag_new": float(np.mean(s_new.score > percentile)),
            "flag_real": float(np.mean(s_real.score > percentile)),
            "flag_new_scene": float(np.mean(scene_score[scene_y == 0] > percentile)),
            "flag_real_scene": float(np.mean(scene_score[scene_y == 1] > percentile)),
            "auroc_f1": roc_auc_score(bad[ok], dist[ok]),
            "auroc_f1_score": roc_auc_score(bad[ok], score[ok]),
            "auroc_f1_xbd": roc_auc_score(bad[len(s_new.score):][real_ok],
                                          s_real.distance[real_ok]),
            "seconds": time.perf_counter() - t0,
        })
    return rows


def markdown(rows: list[dict[str, Any]], runs: dict[str, Any]) -> str:
    """The BENCHMARKS.md section's table."""
    n = {name: len(r.tiles) for name, r in runs.items()}
    scenes = {name: r.tiles["scene_id"].nunique() for name, r in runs.items()}
    f1 = runs["xbd"].tiles["f1"].to_numpy(float)
    lines = [
        f"Index: the {int((runs['demo-synthetic'].tiles['split'] == 'train').sum())} training "
        f"tiles of `demo-synthetic`; calibration: its "
        f"{int(runs['demo-synthetic'].tiles['split'].isin(['val', 'test']).sum())} val + test "
        f"tiles. Negatives: {n['synth-new']} tiles ({scenes['synth-new']} scenes) of synthetic "
        f"locations the model never saw; positives: {n['xbd']} real xBD tiles "
        f"({scenes['xbd']} scenes, model F1 < 0.5 on {np.mean(f1[np.isfinite(f1)] < 0.5):.0%} of "
        "them). Scene = scored as an upload is (mean of its tiles' distances).",
        "",
        "| representation | transform | distance | k | AUROC real vs synth (tiles) | AUROC (scenes) | "
        "flagged > p99: synth / real tiles | synth / real scenes | AUROC F1 < 0.5 (all; xBD only) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['representation']} | {r['transform']} | {r['metric']} | {r['k']} | {r['auroc_real']:.3f} "
            f"(distance {r['auroc_real_distance']:.3f}) | {r['auroc_scene']:.3f} | "
            f"{r['flag_new']:.1%} / {r['flag_real']:.1%} | "
            f"{r['flag_new_scene']:.0%} / {r['flag_real_scene']:.0%} | "
            f"{r['auroc_f1']:.3f}; {r['auroc_f1_xbd']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ood", description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/w3-ood", help="where datasets and runs go")
    parser.add_argument("--xbd", default=str(Path(__file__).resolve().parents[1].parent
                                             / "shared" / "data" / "xbd"))
    parser.add_argument("--xbd-scenes", type=int, default=48,
                        help="a seeded sample of this many xBD scenes (0: all 158)")
    args = parser.parse_args(argv)
    xbd = Path(args.xbd)
    if not (xbd / "images").is_dir():
        print(f"error: no xBD folder at {xbd} (images/ + labels/); pass --xbd", file=sys.stderr)
        return 2
    runs = prepare(Path(args.work), xbd, None if args.xbd_scenes <= 0 else args.xbd_scenes)
    rows = evaluate(runs)
    print(markdown(rows, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
