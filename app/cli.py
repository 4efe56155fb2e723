"""Command line: ``python -m app <command> --help``.

Every command exits 0 on success and 2 with a one-line ``error: ...`` on bad input, so scripts
and CI can rely on it. Heavy modules are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from app import artifacts, config
from app.ml import registry


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from app.build import dataset_line, write_source_dataset

    out = Path(args.out) if args.out else config.DATASETS_DIR / args.name
    path, report = write_source_dataset(
        args.source, Path(args.root) if args.root else None, out, name=args.name,
        n_locations=args.n_locations, scene_size=args.scene_size, tile_size=args.tile_size,
        overlap=args.overlap, downscale=args.downscale, limit=getattr(args, "limit", None),
        seed=args.seed,
    )
    print(dataset_line(path, artifacts.read_json(path / artifacts.MANIFEST, f"dataset {path}"),
                       report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from app.ml.train import TrainConfig, train

    cfg = TrainConfig(
        preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, patience=args.patience, seed=args.seed, crop=args.crop,
        steps_per_epoch=args.steps_per_epoch, max_minutes=args.max_minutes,
    )
    from app.build import train_line

    path, metrics = train(Path(args.dataset), args.run_id, cfg, progress=True)
    print(f"model written to {path}")
    print(train_line(metrics))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from app.pipeline import run_embed

    path = run_embed(
        args.model_run, Path(args.dataset), args.run_id, layer=args.layer,
        representation=args.representation, splits=args.splits, limit=args.limit,
        batch_size=args.batch_size, random_state=args.seed,
    )
    print(f"embeddings written to {path}")
    for line in _held_out_lines(path):
        print(line)
    return 0


def _held_out_lines(run_path: Path) -> list[str]:
    """The held-out tiles' pixel scores from the per-tile counts embed stored (test split, else
    val). Summed over tiles, so overlaps and padding count again: ``evaluate`` scores scenes."""
    from app.ml.metrics import pixel_scores

    run = artifacts.EmbeddingsRun.open(run_path.name, run_path.parent, check_model=False)
    tiles = run.tiles
    for split in ("test", "val"):
        rows = tiles[(tiles["split"].astype(str) == split) & tiles["tp"].notna()]
        if len(rows):
            break
    else:
        return ["no held-out tiles with ground truth: no metrics"]
    tp, fp, fn = (int(rows[k].sum()) for k in ("tp", "fp", "fn"))
    s = pixel_scores(tp, fp, fn, 0)
    threshold = (run.manifest.get("params") or {}).get("threshold", 0.5)
    return [f"held-out {split} tiles ({len(rows)}, at threshold {threshold}): "
            f"pixel precision {s['precision']:.3f}  recall {s['recall']:.3f}  F1 {s['f1']:.3f}  "
            f"IoU {s['iou']:.3f}; mean tile F1 {float(rows['f1'].mean()):.3f}",
            "  (summed over tiles; `python -m app evaluate` scores whole scenes, each pixel once)"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model on a dataset's stitched scenes; a table, and ``--json`` written atomically."""
    from tqdm.auto import tqdm

    from app.ml.evaluate import evaluate_dataset

    dataset = Path(args.dataset)
    if not dataset.is_dir() and not Path(args.dataset).is_absolute() and (
            config.DATASETS_DIR / args.dataset).is_dir():
        dataset = config.DATASETS_DIR / args.dataset  # a bare dataset name
    bars: list[Any] = []  # made on the first tile, so bad input gets only its error line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="tile", desc="evaluate (tiles)",
                             disable=args.quiet))
        bars[0].update(done - bars[0].n)

    try:
        score = evaluate_dataset(args.model_run, dataset, splits=args.splits, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    for line in score.summary_lines():
        print(line)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(out, score.to_dict())
        print(f"scores written to {out}")
    return 0


def cmd_reduce(args: argparse.Namespace) -> int:
    from app.pipeline import run_reduce

    path = run_reduce(
        args.run_id, methods=tuple(args.methods), k_values=range(args.k_min, args.k_max + 1),
        k=args.k, random_state=args.seed,
    )
    print(f"maps and clusters written to {path}")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    """Fit (or refit) the out-of-distribution guard of an embeddings run."""
    from app.pipeline import run_ood

    params = {"k": args.k, "metric": args.metric, "percentile": args.percentile,
              "transform": args.transform, "random_state": args.seed}
    if args.representation:
        params["representation"] = args.representation
    entry = run_ood(args.run_id, params)
    info, p = entry["info"], entry["params"]
    print(f"out-of-distribution guard of {args.run_id}: {info['n_train']} training tiles "
          f"indexed, {info['n_calibration']} held-out tiles calibrate; k = {p['k']}, "
          f"{p['metric']} on {p['transform']} {p['representation']} of {p['layer']}; warns "
          "above the "
          f"{p['percentile']:g}th percentile (distance {info['threshold_distance']:.4g})")
    return 0


def _add_ood_parser(sub: Any) -> None:
    from app.ml.ood import DEFAULTS, METRICS, REPRESENTATIONS, TRANSFORMS

    p = sub.add_parser("ood", help="fit the out-of-distribution guard of an embeddings run "
                                   "(reduce does it too)")
    p.add_argument("run_id")
    p.add_argument("--k", type=int, default=DEFAULTS["k"],
                   help="neighbours averaged (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS, default=DEFAULTS["metric"],
                   help="distance (default: %(default)s)")
    p.add_argument("--representation", choices=REPRESENTATIONS, default=DEFAULTS["representation"],
                   help="pooling of the run's layer (default: the run's own vectors; another "
                        "re-embeds its stored tiles with the model)")
    p.add_argument("--transform", choices=TRANSFORMS, default=DEFAULTS["transform"],
                   help="log1p of the activations first, or none (default: %(default)s)")
    p.add_argument("--percentile", type=float, default=DEFAULTS["percentile"],
                   help="warn above this percentile of held-out distances (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["random_state"])
    p.set_defaults(func=cmd_ood)


#: ``python -m app demo`` = ``build`` with these flags (the shipped demo's runs and parameters).
DEMO_BUILD_ARGS = [
    "--source", "synthetic", "--run-id", config.DEMO_MODEL_RUN,
    "--dataset-name", "demo-synthetic", "--embeddings-run", config.DEMO_EMBEDDINGS_RUN,
    "--n-locations", "20", "--scene-size", "1024", "--tile-size", "256",
    "--epochs", "40", "--max-minutes", "20", "--patience", "8", "--crop", "128",
    "--batch-size", "8", "--lr", "1e-3", "--layer", "bottleneck", "--representation", "gap",
    "--k-min", "2", "--k-max", "10", "--seed", "0",
]


def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped demo, end to end: ``build`` with :data:`DEMO_BUILD_ARGS` and ``--overwrite``
    (the demo's own runs are what it exists to replace; the committed ones carry no build
    record). Resumable like any build: a rerun skips the steps whose inputs are unchanged."""
    return main(["build", *DEMO_BUILD_ARGS, "--overwrite"])


def cmd_build(args: argparse.Namespace) -> int:
    """``build``: make-dataset → train (or --model-run) → embed → reduce → evaluate."""
    from app.build import BuildConfig, run_build

    train = {"preset": args.preset, "epochs": args.epochs, "batch_size": args.batch_size,
             "learning_rate": args.lr, "patience": args.patience, "crop": args.crop,
             "steps_per_epoch": args.steps_per_epoch, "max_minutes": args.max_minutes}
    cfg = BuildConfig(
        source=args.source, run_id=args.run_id, root=Path(args.root) if args.root else None,
        model_run=args.model_run, dataset_name=args.dataset_name,
        embeddings_run=args.embeddings_run, n_locations=args.n_locations,
        scene_size=args.scene_size, tile_size=args.tile_size, overlap=args.overlap,
        downscale=args.downscale, limit=args.limit, seed=args.seed, train=train,
        layer=args.layer, representation=args.representation, embed_splits=args.splits,
        embed_limit=args.embed_limit, batch_size=args.batch_size,
        methods=tuple(args.methods) if args.methods else None, k_min=args.k_min,
        k_max=args.k_max, k=args.k, eval_splits=tuple(args.eval_splits),
        overwrite=args.overwrite,
    )
    run_build(cfg)
    return 0


def _add_tiling_flags(p: Any) -> None:
    """The scene and tiling flags ``make-dataset`` and ``build`` share."""
    p.add_argument("--n-locations", type=int, default=24, help="synthetic: pre/post scene pairs")
    p.add_argument("--scene-size", type=int, default=1024, help="synthetic scene side in pixels")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--downscale", type=int, default=1, help="shrink scenes by this factor first")
    p.add_argument("--limit", type=int, default=None, help="at most this many scenes")


def _add_build_parser(sub: Any) -> None:
    """``python -m app build`` and its flags (grouped by step)."""
    p = sub.add_parser(
        "build", help="the whole path, resumable: make-dataset, train, embed, reduce, evaluate",
        description="make-dataset → train (skipped with --model-run) → embed → reduce → "
                    "evaluate, then a summary with the command that serves the run. Rerunning "
                    "skips every step whose inputs are unchanged (recorded in the manifests) "
                    "and redoes the rest; a failed step keeps the earlier steps' results.")
    p.add_argument("--source", required=True, choices=["synthetic", "xbd", "folder"])
    p.add_argument("--root", help="source folder (xbd: images/ + labels/; folder: images/ + "
                                  "masks/); not used by synthetic")
    p.add_argument("--run-id", required=True,
                   help="names the dataset and the model run (and, with the layer, the "
                        "embeddings run) unless the flags below name them")
    p.add_argument("--model-run", default=None,
                   help="an existing (trained or imported) model run: used as it is, no "
                        "training")
    p.add_argument("--dataset-name", default=None, help="datasets/<name> (default: --run-id)")
    p.add_argument("--embeddings-run", default=None,
                   help="embeddings run id (default: <run-id>-<layer>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset, model or embeddings run of the same id that no "
                        "build made (trained by hand, imported, the committed demo)")
    p.add_argument("--seed", type=int, default=0, help="split, training, maps (default 0)")
    _add_tiling_flags(p.add_argument_group("dataset"))
    g = p.add_argument_group("train (skipped with --model-run)")
    g.add_argument("--preset", choices=["light", "seed"], default="light")
    g.add_argument("--epochs", type=int, default=40)
    g.add_argument("--batch-size", type=int, default=8, help="training and embedding batch")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--patience", type=int, default=8)
    g.add_argument("--crop", type=int, default=128, help="random training crop size")
    g.add_argument("--steps-per-epoch", type=int, default=None)
    g.add_argument("--max-minutes", type=float, default=None,
                   help="training time budget (stops after the epoch that exceeds it)")
    g = p.add_argument_group("embed and reduce")
    g.add_argument("--layer", default=None,
                   help="layer to embed (default: the model's: bottleneck, or an imported "
                        "model's embedding layer)")
    g.add_argument("--representation", choices=["gap", "avgmax", "spp", "flatten"],
                   default="gap")
    g.add_argument("--splits", nargs="*", default=None, metavar="SPLIT",
                   help="embed only these splits (default: all tiles)")
    g.add_argument("--embed-limit", type=int, default=None, help="embed at most this many tiles")
    g.add_argument("--methods", nargs="+", default=None, choices=registry.reducer_names(),
                   help="map methods (default: all)")
    g.add_argument("--k-min", type=int, default=2)
    g.add_argument("--k-max", type=int, default=10)
    g.add_argument("--k", type=int, default=None, help="chosen k (default: best silhouette)")
    g = p.add_argument_group("evaluate")
    g.add_argument("--eval-splits", nargs="+", default=["test"], metavar="SPLIT",
                   help="splits scored on the stitched scenes (default: test)")
    p.set_defaults(func=cmd_build)


def _apply_serve_env(args: argparse.Namespace) -> None:
    """Hand the serve options to the app (and to gunicorn's workers) through the environment."""
    if args.model_run:
        os.environ["UNET_LENS_MODEL_RUN"] = args.model_run
    if args.embeddings_run:
        os.environ["UNET_LENS_EMBEDDINGS_RUN"] = args.embeddings_run


def serve_preflight(args: argparse.Namespace) -> bool:
    """Check the artifacts once before serving and print what is missing; True when ready.

    Problems and warnings go to stderr (``problem: ...`` / ``warning: ...``), so a person sees
    at start-up what the dashboard's banner and ``/healthz`` will say; then one line per check
    (model, cache with Redis reachability, temp folder) and ``ready:`` go to stdout.
    """
    from app.web import health, runs

    runs.configure(embeddings_run=args.embeddings_run, model_run=args.model_run)
    report = health.preflight()
    for line in health.describe(report):
        bad = line.startswith(("problem:", "warning:"))
        print(line, file=sys.stderr if bad else sys.stdout, flush=True)
    if not report.ready:
        print("The server starts anyway: pages show what is missing and /healthz answers 503 "
              "until it is fixed.", file=sys.stderr, flush=True)
    return report.ready


def cmd_serve(args: argparse.Namespace) -> int:
    _apply_serve_env(args)
    if args.workers < 1 or args.threads < 1:
        raise ValueError("--workers and --threads must be at least 1.")
    ready = serve_preflight(args)
    if args.check:
        return 0 if ready else 1
    return _serve_gunicorn(args)


#: Worker log lines look like gunicorn's own ("[time] [pid] [LEVEL] ...").
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def wsgi_app() -> Any:
    """What each gunicorn worker serves (``app.cli:wsgi_app()``): the dashboard's Flask server,
    with INFO logging on so the warm-up thread's ``model ... warm:`` line and request errors
    show. Called after the fork, so the app, its model and its warm-up thread are per worker."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S %z")
    # ``kill -USR2 <worker pid>`` writes every thread's stack to the log: how a stuck request or
    # job is diagnosed in place (gunicorn's workers leave SIGUSR2 unused).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    from app.web.main import server  # builds the app and starts the warm-up (lazy: Dash, TF)

    return server


def gunicorn_argv(args: argparse.Namespace) -> list[str]:
    """The gunicorn command ``serve`` execs (workers build the app after the fork)."""
    argv = [
        sys.executable, "-m", "gunicorn", "--workers", str(args.workers),
        "--threads", str(args.threads), "--bind", f"{args.host}:{args.port}",
        "--timeout", "120", "--graceful-timeout", "20",
        "--no-control-socket",  # unused; one fixed path under ~ would be shared by every server
    ]
    if args.access_log:
        argv += ["--access-logfile", "-"]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        argv += ["--worker-tmp-dir", str(shm)]  # heartbeat files off the (overlay) disk
    return [*argv, "app.cli:wsgi_app()"]


def _serve_gunicorn(args: argparse.Namespace) -> int:
    workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
    print(f"U-Net Lens on http://{args.host}:{args.port}/ (gunicorn, {workers} x "
          f"{args.threads} threads; Ctrl-C stops it)", flush=True)
    argv = gunicorn_argv(args)
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def cmd_export(args: argparse.Namespace) -> int:
    """``export savedmodel`` / ``export projector``."""
    if args.what == "savedmodel":
        from app.export import export_savedmodel

        out = export_savedmodel(args.model_run, Path(args.out), overwrite=args.overwrite)
        print(f"SavedModel of model run {args.model_run} written to {out} "
              "(signature serving_default: image -> mask, bottleneck = the model's embedding "
              "layer)")
        return 0
    from app.export import export_projector

    out = export_projector(args.run, Path(args.out), overwrite=args.overwrite,
                           sprite=not args.no_sprite)
    print(f"Embedding Projector files of run {args.run} written to {out} "
          f"(tensorboard --logdir {out}, then the Projector tab)")
    return 0


def cmd_import_model(args: argparse.Namespace) -> int:
    """``import-model``: detect, check and store a U-Net trained elsewhere."""
    from app.ml.importer import format_table, import_model

    result = import_model(
        Path(args.path), args.run_id, custom_objects=args.custom_objects,
        overwrite=args.overwrite, dry_run=args.dry_run, trained_on=args.trained_on,
        log=lambda msg: print(msg, flush=True),
        input_size=args.input_size, size_multiple=args.size_multiple,
        input_range=args.input_range, mean=args.mean, std=args.std, output=args.output,
        building_channel=args.building_channel, embedding_layer=args.embedding_layer,
    )
    print(format_table(result.rows))
    print(f"check: the wrapped model's mask equals the model's building probability "
          f"(max difference {result.check['max_abs_diff']:.2g} on a "
          f"{result.check['size'][0]}x{result.check['size'][1]} image)")
    if result.path is None:
        print("dry run: nothing written")
        return 0
    print(f"model run written to {result.path} (the file is stored as it is, SHA-256 "
          "recorded; it is never re-saved)")
    print(f"next: python -m app build --source folder|xbd --root DIR --run-id NAME "
          f"--model-run {args.run_id}  (embed, maps, evaluation on your images; then serve)")
    return 0


def _add_import_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import-model", help="import a U-Net trained elsewhere (.keras or legacy .h5)",
        description="Import a Keras U-Net so that every page works on it. The file is loaded "
        "with safe_mode=True (no lambda code), checked, and copied as it is into "
        "model_store/<run-id>/; a table says what was detected, each item can be overridden.")
    p.add_argument("path", help="the model file: a Keras 3 .keras archive or a legacy .h5")
    p.add_argument("--run-id", required=True)
    p.add_argument("--custom-objects", metavar="MODULE", default=None,
                   help="a Python module (importable name) that defines or registers the "
                        "model's custom layers. Importing it RUNS ITS CODE, here and in every "
                        "process that later loads this run (embed, serve): name only a module "
                        "you trust")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="resize every image to N x N for the model (default: the model's "
                        "fixed size, or none for a free-size model)")
    p.add_argument("--size-multiple", type=int, default=None, metavar="M",
                   help="free-size model: pad images to a multiple of M (default: probed)")
    p.add_argument("--input-range", choices=["0-1", "0-255", "-1-1"], default=None,
                   help="what pixel range the model expects (default: 0-255 when it rescales "
                        "inside, else 0-1)")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="V",
                   help="per-channel mean (1 or 3 values, in --input-range units) subtracted "
                        "after the range scaling")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="V",
                   help="per-channel std (1 or 3 values) divided by after the mean")
    p.add_argument("--output", choices=["sigmoid", "logits", "softmax"], default=None,
                   help="what the model returns (default: detected): sigmoid probabilities, "
                        "logits (1 channel: sigmoid logits; N: softmax logits), softmax")
    p.add_argument("--building-channel", type=int, default=None, metavar="C",
                   help="the output channel that is 'building' (default: 0 of 1, else 1)")
    p.add_argument("--embedding-layer", default=None, metavar="NAME",
                   help="the layer the maps embed from (default: the deepest spatial layer)")
    p.add_argument("--trained-on", default=None, metavar="TEXT",
                   help="what the model was trained on, in words (stored as the manifest's "
                        "dataset name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.add_argument("--dry-run", action="store_true", help="detect and check; write nothing")
    p.set_defaults(func=cmd_import_model)


def cmd_runs(args: argparse.Namespace) -> int:
    print("model runs:", ", ".join(artifacts.list_runs(config.MODEL_STORE)) or "(none)")
    print("embeddings runs:", ", ".join(artifacts.list_runs(config.EMBEDDINGS_DIR)) or "(none)")
    return 0


def _add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model on a dataset's whole scenes (each pixel once): pixel and "
                         "building scores, per source/disaster/phase",
        description="Pixel precision, recall, F1 and IoU and building-level F1 (IoU >= 0.5) of a "
        "model on a tile dataset, overall and per source, disaster and pre/post. Each tile is "
        "predicted once; each scene is stitched back from its tiles and scored whole, so every "
        "scene pixel counts once (never twice on overlapping tiles or reflect padding). The "
        "Evaluate page shows the same numbers.")
    p.add_argument("--model-run", required=True, help="a model-store run (trained or imported)")
    p.add_argument("--dataset", required=True, help="a make-dataset output folder (or its name "
                                                    "under datasets/)")
    p.add_argument("--splits", nargs="+", default=["test"], metavar="SPLIT",
                   help="train, val and/or test (default: test)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the scores here (JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="U-Net Lens: datasets → U-Net → embeddings → maps → dashboard.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("make-dataset", help="cut scenes into a tile dataset with a split")
    p.add_argument("--source", choices=["synthetic", "xbd", "folder"], default="synthetic")
    p.add_argument("--root", help="source folder (xbd: images/ + labels/; folder: images/ + masks/)")
    p.add_argument("--name", default="synthetic", help="dataset name (default: %(default)s)")
    p.add_argument("--out", help="output folder (default: datasets/<name>)")
    _add_tiling_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("train", help="train a U-Net on a tile dataset into model_store/")
    p.add_argument("--dataset", required=True, help="a make-dataset output folder")
    p.add_argument("--run-id", required=True)
    p.add_argument("--preset", choices=["light", "seed"], default="light")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--crop", type=int, default=None, help="random training crop size")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget: stops after the epoch that exceeds it (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="extract layer embeddings, masks, metrics and thumbnails")
    p.add_argument("--model-run", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--layer", default=None,
                   help="layer to embed (default: the model's: bottleneck, or an imported "
                        "model's embedding layer)")
    p.add_argument("--representation", choices=["gap", "avgmax", "spp", "flatten"], default="gap")
    p.add_argument("--splits", nargs="*", default=None, metavar="SPLIT",
                   help="only the tiles of these splits (train, val, test); "
                        "left out: all tiles")
    p.add_argument("--limit", type=int, default=None, help="at most this many tiles")
    p.add_argument("--batch-size", type=int, default=8,
                   help="tiles per forward pass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_embed)

    _add_evaluate_parser(sub)

    p = sub.add_parser("reduce", help="PCA / t-SNE / UMAP maps and a K-means sweep of a run")
    p.add_argument("run_id")
    p.add_argument("--methods", nargs="+", default=list(registry.reducer_names()),
                   choices=registry.reducer_names(), help="map methods (default: all)")
    p.add_argument("--k-min", type=int, default=2)
    p.add_argument("--k-max", type=int, default=10)
    p.add_argument("--k", type=int, default=None, help="chosen k (default: best silhouette)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_reduce)

    _add_ood_parser(sub)

    _add_build_parser(sub)

    p = sub.add_parser("demo", help="build the shipped demo (= build with the demo's flags)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="start the dashboard")
    p.add_argument("--host", default=config.HOST)
    p.add_argument("--port", type=int, default=config.PORT)
    p.add_argument("--model-run", default=None)
    p.add_argument("--embeddings-run", default=None)
    p.add_argument("--workers", type=int, default=1,
                   help="gunicorn worker processes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=4,
                   help="threads per gunicorn worker (default: %(default)s)")
    p.add_argument("--access-log", action="store_true", help="gunicorn: log every request")
    p.add_argument("--check", action="store_true",
                   help="only check the artifacts and exit (0 ready, 1 not ready)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a model (TF Serving) or embeddings (TensorBoard)")
    ex = p.add_subparsers(dest="what", required=True, metavar="<what>")
    e = ex.add_parser("savedmodel", help="a TF SavedModel with a serving_default signature")
    e.add_argument("--model-run", required=True)
    e.add_argument("--out", required=True, help="output folder (e.g. export/unet/1)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    e.set_defaults(func=cmd_export)
    e = ex.add_parser("projector", help="TensorBoard Embedding Projector files of a run")
    e.add_argument("--run", required=True, help="embeddings run id")
    e.add_argument("--out", required=True, help="output folder (a TensorBoard log dir)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    e.add_argument("--no-sprite", action="store_true", help="skip sprite.png")
    e.set_defaults(func=cmd_export)

    _add_import_parser(sub)

    p = sub.add_parser("runs", help="list stored model and embeddings runs")
    p.set_defaults(func=cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from app.artifacts import ArtifactError
    from app.data.base import DatasetError

    try:
        return int(args.func(args) or 0)
    except (ArtifactError, DatasetError, ValueError, FileNotFoundError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
