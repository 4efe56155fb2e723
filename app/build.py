"""``python -m app build``: scenes → tile dataset → model → embeddings → maps → held-out scores,
in one resumable command.

Steps, in order, and what each one's inputs are (recorded with ``artifacts.stamp_step`` in the
manifest of what the step wrote; a rerun skips a step whose inputs have the recorded key):

=========  ===============================================  ====================================
step       inputs                                           recorded in
=========  ===============================================  ====================================
dataset    source, root folder and a listing of its files   ``datasets/<name>/manifest.json``
           (name, size, mtime), every tiling parameter
train      the dataset (table hash + creation time), every  ``model_store/<run>/manifest.json``
           ``TrainConfig`` field
embed      model run + SHA-256, the dataset, layer,         ``embeddings/<run>/manifest.json``
           representation, splits, limit, batch, seed
reduce     the vectors' SHA-256, methods, k values, k, seed  (same)
evaluate   model run + SHA-256, the dataset, splits         (same; scores in ``["evaluation"]``)
=========  ===============================================  ====================================

Upstream results enter by content, so a redone step makes exactly the steps that read its
output redo: a new dataset retrains, a new model re-embeds and re-evaluates, new vectors
re-reduce; a reduce parameter redoes reduce only. Evaluate's record lives in the embeddings
run, which embed rewrites, so a redone embed also redoes evaluate. ``--model-run`` names a
model that is used as it is (the train step is "given"): nothing in ``model_store`` is written.

Every step writes atomically and is stamped only after it succeeded, so a failed or
interrupted step leaves the earlier steps' results (and their stamps) intact and the same
command resumes at the failed step. A build never replaces a run it did not make (no stamp:
trained by hand, imported, or the committed demo) unless ``overwrite`` is set.

Heavy modules (TensorFlow, pandas) are imported by the steps that need them, so the CLI's
argument errors come back at once.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app import artifacts, config
from app.artifacts import ArtifactError

SOURCES = ("synthetic", "xbd", "folder")
STEPS = ("dataset", "train", "embed", "reduce", "evaluate")
#: States a step ends in: "ran" (it did its work now), "skipped" (its recorded inputs are
#: unchanged), "given" (train with ``--model-run``), "failed", "not reached" (after a failure).
RAN, SKIPPED, GIVEN, FAILED, NOT_REACHED = "ran", "skipped", "given", "failed", "not reached"


# --------------------------------------------------------------------------- scene sources


def source_scenes(source: str, root: Path | None, report: Any, *, n_locations: int = 24,
                  seed: int = 0, scene_size: int = 1024) -> tuple[Iterator, int]:
    """Scenes of ``source``, lazily, and the progress bar's total: every location's phases, or
    the files a (cheap) listing of the folder finds (read or skipped)."""
    if source == "synthetic":
        from app.data.synthetic import PHASES, iter_synthetic

        scenes = iter_synthetic(n_locations, seed=seed, size=scene_size)
        return scenes, max(0, n_locations) * len(PHASES)
    if source not in SOURCES:
        raise ValueError(f"The '--source' option must be one of {list(SOURCES)}. "
                         f"Got {source!r} instead.")
    if root is None:
        raise ValueError(f"--root is required for --source {source}.")
    root = Path(root)
    if source == "xbd":
        from app.data.xbd import count_xbd, iter_xbd

        return iter_xbd(root, report=report), count_xbd(root)
    from app.data.folders import count_folder, iter_folder

    return iter_folder(root, report=report), count_folder(root)


def downscaled(scenes, factor: int):
    """Shrink scenes by an integer factor (e.g. xBD 1024² → 512² to train on CPU)."""
    import numpy as np
    from PIL import Image

    from app.data.base import Building, Scene

    for s in scenes:
        h, w = s.image.shape[:2]
        size = (w // factor, h // factor)
        image = np.asarray(Image.fromarray(s.image).resize(size, Image.Resampling.BOX))
        mask = None
        if s.mask is not None:
            mask = (np.asarray(Image.fromarray(s.mask * 255).resize(size, Image.Resampling.BOX)) >= 128).astype(np.uint8)
        buildings = [
            Building(b.uid, tuple((x / factor, y / factor) for x, y in b.polygon), b.damage)
            for b in s.buildings
        ]
        meta = dict(s.meta)
        if isinstance(meta.get("gsd"), (int, float)):
            meta["gsd"] = float(meta["gsd"]) * factor
        meta["downscale"] = factor
        yield Scene(s.scene_id, s.source, image, mask, buildings, meta, s.group)


def write_source_dataset(
    source: str, root: Path | None, out: Path, *, name: str, n_locations: int = 24,
    scene_size: int = 1024, tile_size: int = 256, overlap: int = 0, downscale: int = 1,
    limit: int | None = None, seed: int = 0, progress: bool = True,
) -> tuple[Path, Any]:
    """``make-dataset``: tile the scenes of a source into ``out`` (atomically); return the
    folder and the loader's report (skipped files). ``limit``: at most that many scenes."""
    from app.data.base import LoadReport
    from app.data.dataset import write_dataset

    if limit is not None and limit < 1:
        raise ValueError(f"The '--limit' option must be an int >= 1. Got {limit!r} instead.")
    report = LoadReport()
    scenes, total = source_scenes(source, root, report, n_locations=n_locations, seed=seed,
                                  scene_size=scene_size)
    params: dict[str, Any] = {"n_locations": n_locations, "scene_size": scene_size}
    if root:
        params["source_root"] = str(root)
    if limit is not None:
        scenes, total = itertools.islice(scenes, limit), min(total, limit)
        params["limit"] = limit
    if downscale != 1:
        scenes = downscaled(scenes, downscale)
        params["downscale"] = downscale
    path = write_dataset(
        scenes, out, name=name, source=source, tile_size=tile_size, overlap=overlap,
        seed=seed, report=report, params=params, total=total, progress=progress,
    )
    return path, report


def source_listing(root: Path) -> str:
    """SHA-256 of the names, sizes and mtimes of the files in ``root``'s sub-folders (images/,
    labels/, masks/): a changed, added or removed source file changes it, without reading one."""
    digest = hashlib.sha256()
    root = Path(root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                st = file.stat()
                digest.update(f"{folder.name}/{file.name}\0{st.st_size}\0{st.st_mtime_ns}\n"
                              .encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- configuration


@dataclass
class BuildConfig:
    """Everything ``build`` is asked to do (the CLI flags)."""

    source: str
    run_id: str
    root: Path | None = None
    model_run: str | None = None  # a stored (or imported) model: skip training
    dataset_name: str | None = None  # default: run_id
    embeddings_run: str | None = None  # default: <run_id>-<layer>
    # dataset
    n_locations: int = 24
    scene_size: int = 1024
    tile_size: int = 256
    overlap: int = 0
    downscale: int = 1
    limit: int | None = None
    seed: int = 0
    # train: TrainConfig fields (preset, epochs, batch_size, learning_rate, ...)
    train: dict[str, Any] = field(default_factory=dict)
    # embed
    layer: str | None = None  # default: the model's (bottleneck; an imported model's own)
    representation: str = "gap"
    embed_splits: list[str] | None = None
    embed_limit: int | None = None
    batch_size: int = 8
    # reduce
    methods: tuple[str, ...] | None = None  # default: every registered method
    k_min: int = 2
    k_max: int = 10
    k: int | None = None
    # evaluate
    eval_splits: tuple[str, ...] = ("test",)
    overwrite: bool = False
    progress: bool = True

    @property
    def dataset_id(self) -> str:
        return self.dataset_name or self.run_id

    @property
    def embeddings_id(self) -> str:
        layer = re.sub(r"[^A-Za-z0-9_.-]", "_", self.layer or "bottleneck")
        return self.embeddings_run or f"{self.run_id}-{layer}"

    @property
    def model_id(self) -> str:
        return self.model_run or self.run_id


@dataclass
class StepResult:
    name: str
    state: str
    reason: str
    seconds: float = 0.0


@dataclass
class BuildResult:
    """What a build did, where its results are, and the command that serves them."""

    config: BuildConfig
    steps: list[StepResult]
    dataset_path: Path
    model_run: str
    embeddings_run: str
    serve_command: str
    summary: list[str]

    def states(self) -> dict[str, str]:
        return {s.name: s.state for s in self.steps}


# --------------------------------------------------------------------------- checks


def _available_models(store: Path) -> str:
    runs = artifacts.list_runs(store)
    return ", ".join(runs) if runs else "none"


def check_config(cfg: BuildConfig, *, datasets_dir: Path, model_store: Path,
                 embeddings_root: Path) -> None:
    """Every problem that can be seen before a step runs, with what was expected."""
    if cfg.source not in SOURCES:
        raise ValueError(f"The '--source' option must be one of {list(SOURCES)}. "
                         f"Got {cfg.source!r} instead.")
    for what, value in (("--run-id", cfg.run_id), ("--dataset-name", cfg.dataset_id),
                        ("--embeddings-run", cfg.embeddings_id)):  # (layer resolved first)
        try:
            artifacts.validate_run_id(value)
        except ArtifactError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if cfg.source != "synthetic":
        if cfg.root is None:
            raise ValueError(f"--root is required for --source {cfg.source}: the folder that "
                             "holds " + ("images/ and labels/ (xBD)." if cfg.source == "xbd"
                                         else "images/ and masks/."))
        root = Path(cfg.root)
        if not root.is_dir():
            raise ValueError(f"--root {root}: no such folder; expected the folder that holds "
                             + ("images/ and labels/." if cfg.source == "xbd"
                                else "images/ and masks/."))
        _, total = source_scenes(cfg.source, root, None)  # DatasetError: what is missing
        if not total:
            raise ValueError(f"--root {root}: no image files found; expected "
                             + ("images/<stem>.png|jpg|tif with labels/<stem>.json."
                                if cfg.source == "xbd" else "images/ and masks/ pairs."))
    for name in ("downscale", "tile_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"The '--{name.replace('_', '-')}' option must be an int >= 1. "
                             f"Got {value!r} instead.")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"The '--limit' option must be an int >= 1. Got {cfg.limit!r} instead.")
    if cfg.model_run is not None:
        try:
            artifacts.validate_run_id(cfg.model_run)
        except ArtifactError as exc:
            raise ValueError(f"--model-run: {exc}") from None
        if not (model_store / cfg.model_run / artifacts.MANIFEST).is_file():
            raise ValueError(
                f"--model-run {cfg.model_run!r}: no such model run in {model_store} (runs "
                f"there: {_available_models(model_store)}). Import one with `python -m app "
                "import-model PATH --run-id ID`, or leave --model-run out to train one.")
        artifacts.verify_model_file(cfg.model_run, model_store)  # hash mismatch: named
    if not cfg.overwrite:
        owned = [
            ("dataset", datasets_dir / cfg.dataset_id, "dataset", "--dataset-name"),
            ("embed", embeddings_root / cfg.embeddings_id, "embeddings run", "--embeddings-run"),
        ]
        if cfg.model_run is None:
            owned.insert(1, ("train", model_store / cfg.run_id, "model run", "--run-id"))
        for step, path, what, flag in owned:
            if path.exists() and _unowned(path, step):
                hint = (" To use that model as it is, pass --model-run "
                        f"{cfg.run_id}." if step == "train" else "")
                raise ValueError(
                    f"{what} {path} exists and was not made by `build` (no build record in "
                    f"its manifest); it is left untouched. Choose another {flag}, or pass "
                    f"--overwrite to replace it.{hint}")


def model_layer(cfg: BuildConfig, model_store: Path) -> str:
    """The layer to embed: ``--layer``, else the given model's default (an imported run's
    ``embedding_layer``, as ``artifacts.model_default_layer`` reads it), else ``bottleneck``
    (what ``train`` builds). A given model that cannot be read is left to ``check_config``."""
    if cfg.layer:
        return cfg.layer
    if cfg.model_run:
        try:
            manifest = artifacts.read_model_manifest(cfg.model_run, model_store)
        except ArtifactError:
            return "bottleneck"
        return str(artifacts.model_default_layer(manifest))
    return "bottleneck"


def _unowned(path: Path, step: str) -> bool:
    """True when ``path`` holds something no build step recorded (so a build must not
    replace it without ``--overwrite``)."""
    try:
        manifest = artifacts.read_manifest_if_any(path / artifacts.MANIFEST, str(path))
    except ArtifactError:
        return True
    return artifacts.build_stamp(manifest, step) is None


# --------------------------------------------------------------------------- the steps


class _Steps:
    """Runs the steps in order, printing a header and an outcome line for each."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.results: list[StepResult] = []

    def header(self, name: str) -> str:
        return f"build [{STEPS.index(name) + 1}/{len(STEPS)}] {name}"

    def skip(self, name: str, reason: str, state: str = SKIPPED) -> None:
        self.out(f"{self.header(name)}: {state}: {reason}")
        self.results.append(StepResult(name, state, reason))

    def run(self, name: str, reason: str, work: Callable[[], Any]) -> Any:
        self.out(f"{self.header(name)}: running: {reason}")
        start = time.perf_counter()
        try:
            value = work()
        except BaseException as exc:
            seconds = time.perf_counter() - start
            self.results.append(StepResult(name, FAILED, reason, seconds))
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.out(f"{self.header(name)}: failed after {_duration(seconds)}: {first}")
            raise
        seconds = time.perf_counter() - start
        self.results.append(StepResult(name, RAN, reason, seconds))
        self.out(f"{self.header(name)}: done in {_duration(seconds)}")
        return value


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _why(manifest: dict | None, step: str, inputs: dict, what: str,
         unrecorded: str = "") -> str | None:
    """None when ``step`` can be skipped, else why it runs (in words)."""
    if manifest is None:
        return f"no {what} yet"
    state = artifacts.step_state(manifest, step, inputs)
    if state == "unchanged":
        return None
    if state == "unrecorded":
        return unrecorded or f"{what} was not made by build (replaced: --overwrite)"
    changed = artifacts.changed_inputs(manifest, step, inputs)
    return f"inputs changed since the last build: {', '.join(changed) or 'their values'}"


def _read(path: Path, what: str) -> dict | None:
    try:
        return artifacts.read_manifest_if_any(path / artifacts.MANIFEST, what)
    except ArtifactError:
        return None  # unreadable: redo the step


def run_build(
    cfg: BuildConfig,
    *,
    datasets_dir: Path | None = None,
    model_store: Path | None = None,
    embeddings_root: Path | None = None,
    out: Callable[[str], None] | None = None,
) -> BuildResult:
    """Run (or resume) the build of ``cfg``; return what each step did and the summary."""
    datasets_dir = Path(datasets_dir or config.DATASETS_DIR)
    model_store = Path(model_store or config.MODEL_STORE)
    embeddings_root = Path(embeddings_root or config.EMBEDDINGS_DIR)
    out = out or (lambda line: print(line, flush=True))
    cfg = replace(cfg, layer=model_layer(cfg, model_store))
    check_config(cfg, datasets_dir=datasets_dir, model_store=model_store,
                 embeddings_root=embeddings_root)
    steps = _Steps(out)
    started = time.perf_counter()
    dataset_path = datasets_dir / cfg.dataset_id
    emb_path = embeddings_root / cfg.embeddings_id
    try:
        _dataset_step(cfg, steps, dataset_path)
        _train_step(cfg, steps, dataset_path, model_store)
        _embed_step(cfg, steps, dataset_path, model_store, embeddings_root)
        _reduce_step(cfg, steps, emb_path, embeddings_root)
        _evaluate_step(cfg, steps, dataset_path, model_store, emb_path)
    except BaseException:
        # The step that failed, or the one being prepared when the build was interrupted.
        failed = next((s.name for s in steps.results if s.state == FAILED),
                      STEPS[min(len(steps.results), len(STEPS) - 1)])
        done = {s.name for s in steps.results}
        for name in STEPS:
            if name not in done:
                steps.results.append(StepResult(name, NOT_REACHED, f"{failed} failed"))
        kept = [s.name for s in steps.results if s.state in (RAN, SKIPPED, GIVEN)]
        print(f"build: step {failed} failed. "
              + (f"The results of {', '.join(kept)} are kept: " if kept else "")
              + f"the same command resumes at {failed}.", file=sys.stderr, flush=True)
        raise
    serve = serve_command(cfg.embeddings_id, cfg.model_id, datasets_dir=datasets_dir,
                          model_store=model_store, embeddings_root=embeddings_root)
    result = BuildResult(cfg, steps.results, dataset_path, cfg.model_id, cfg.embeddings_id,
                         serve, [])
    result.summary = summary_lines(result, model_store, emb_path,
                                   time.perf_counter() - started)
    for line in result.summary:
        out(line)
    return result


def _dataset_step(cfg: BuildConfig, steps: _Steps, path: Path) -> None:
    inputs = {
        "source": cfg.source,
        "root": str(Path(cfg.root).resolve()) if cfg.root and cfg.source != "synthetic"
        else None,
        "listing": source_listing(Path(cfg.root)) if cfg.root and cfg.source != "synthetic"
        else None,
        "params": {
            "n_locations": cfg.n_locations if cfg.source == "synthetic" else None,
            "scene_size": cfg.scene_size if cfg.source == "synthetic" else None,
            "tile_size": cfg.tile_size, "overlap": cfg.overlap, "downscale": cfg.downscale,
            "limit": cfg.limit, "seed": cfg.seed,
        },
        "name": cfg.dataset_id,
    }
    manifest = _read(path, f"dataset {path}")
    why = _why(manifest, "dataset", inputs, f"dataset {path}")
    if why is None and (path / artifacts.DATASET_TABLE).is_file():
        counts = (manifest or {}).get("counts", {})
        steps.skip("dataset", f"inputs unchanged, {path} ({counts.get('tiles', '?')} tiles)")
        return

    def work() -> None:
        written, report = write_source_dataset(
            cfg.source, cfg.root if cfg.source != "synthetic" else None, path,
            name=cfg.dataset_id, n_locations=cfg.n_locations, scene_size=cfg.scene_size,
            tile_size=cfg.tile_size, overlap=cfg.overlap, downscale=cfg.downscale,
            limit=cfg.limit, seed=cfg.seed, progress=cfg.progress,
        )
        done = artifacts.stamp_step(written / artifacts.DATASET_MANIFEST, "dataset", inputs,
                                    f"dataset {written}")
        steps.out(dataset_line(written, done, report))

    steps.run("dataset", why or f"{path} is incomplete", work)


def dataset_line(path: Path, manifest: dict, report: Any) -> str:
    """``dataset written to ...: N scenes, M tiles (train, val, test), K files skipped``."""
    counts = manifest["counts"]
    lines = [
        f"dataset written to {path}: {counts['scenes']} scenes, {counts['tiles']} tiles "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']}), "
        f"{counts['skipped']} files skipped"
    ]
    lines += [f"  skipped {file}: {reason}" for file, reason in report.skipped[:20]]
    return "\n".join(lines)


def _train_params(cfg: BuildConfig) -> dict[str, Any]:
    from app.ml.train import TrainConfig  # lazy: TensorFlow

    return asdict(TrainConfig(**{"seed": cfg.seed, **cfg.train}))


def _train_step(cfg: BuildConfig, steps: _Steps, dataset_path: Path, store: Path) -> None:
    if cfg.model_run is not None:
        steps.skip("train", f"model run {cfg.model_run!r} is given (--model-run)", GIVEN)
        return
    params = _train_params(cfg)
    inputs = {"dataset": artifacts.dataset_identity(dataset_path), "config": params}
    path = store / cfg.run_id
    manifest = _read(path, f"model run {cfg.run_id!r}")
    why = _why(manifest, "train", inputs, f"model run {path}")
    if why is None:
        try:
            artifacts.verify_model_file(cfg.run_id, store)
            steps.skip("train", f"inputs unchanged, model run {path}")
            return
        except ArtifactError as exc:
            why = str(exc)

    def work() -> None:
        from app.ml.train import TrainConfig, train

        written, metrics = train(dataset_path, cfg.run_id, TrainConfig(**params), store=store,
                                 progress=cfg.progress)
        artifacts.stamp_step(written / artifacts.MANIFEST, "train", inputs,
                             f"model run {cfg.run_id!r}")
        steps.out(f"model written to {written}")
        steps.out(train_line(metrics))

    steps.run("train", why, work)


def train_line(metrics: dict) -> str:
    """The held-out pixel scores ``train`` prints."""
    test = metrics["test"]
    return (
        f"held-out {metrics['test_split']} pixels: precision {test['precision']:.3f}  "
        f"recall {test['recall']:.3f}  F1 {test['f1']:.3f}  IoU {test['iou']:.3f}  "
        f"({metrics['epochs_run']} epochs, {metrics['train_seconds']:.0f} s on "
        f"{', '.join(metrics['devices'])})"
    )


def _embed_step(cfg: BuildConfig, steps: _Steps, dataset_path: Path, store: Path,
                root: Path) -> None:
    _, model_sha = artifacts.verify_model_file(cfg.model_id, store)
    inputs = {
        "model_run": cfg.model_id, "model_sha256": model_sha,
        "dataset": artifacts.dataset_identity(dataset_path), "layer": cfg.layer,
        "representation": cfg.representation,
        "splits": list(cfg.embed_splits) if cfg.embed_splits else None,
        "limit": cfg.embed_limit, "batch_size": cfg.batch_size, "seed": cfg.seed,
    }
    path = root / cfg.embeddings_id
    manifest = _read(path, f"embeddings run {cfg.embeddings_id!r}")
    why = _why(manifest, "embed", inputs, f"embeddings run {path}")
    if why is None and all((path / n).is_file() for n in artifacts.EMBEDDINGS_HASHED):
        steps.skip("embed", f"inputs unchanged, embeddings run {path}")
        return

    def work() -> None:
        from app.pipeline import run_embed

        written = run_embed(
            cfg.model_id, dataset_path, cfg.embeddings_id, layer=cfg.layer,
            representation=cfg.representation, splits=cfg.embed_splits, limit=cfg.embed_limit,
            batch_size=cfg.batch_size, random_state=cfg.seed, embeddings_root=root,
            model_store=store, progress=cfg.progress,
        )
        artifacts.stamp_step(written / artifacts.MANIFEST, "embed", inputs,
                             f"embeddings run {cfg.embeddings_id!r}")
        steps.out(f"embeddings written to {written}")

    steps.run("embed", why or f"embeddings run {path} is incomplete", work)


def _reduce_step(cfg: BuildConfig, steps: _Steps, path: Path, root: Path) -> None:
    from app.ml import registry

    manifest = artifacts.read_json(path / artifacts.MANIFEST, f"embeddings run {path.name!r}")
    methods = list(cfg.methods) if cfg.methods else list(registry.reducer_names())
    inputs = {
        "vectors_sha256": manifest.get("files", {}).get(artifacts.VECTORS_FILE),
        "methods": methods, "k_values": [cfg.k_min, cfg.k_max], "k": cfg.k, "seed": cfg.seed,
    }
    why = _why(manifest, "reduce", inputs, f"embeddings run {path}", "no maps yet")
    coords = path / artifacts.REDUCED_DIR / artifacts.COORDS_FILE
    if why is None and manifest.get("reduce") and coords.is_file():
        steps.skip("reduce", f"inputs unchanged, maps {', '.join(methods)} in {coords.parent}")
        return

    def work() -> None:
        from app.pipeline import run_reduce

        written = run_reduce(path.name, methods=methods, k_values=range(cfg.k_min, cfg.k_max + 1),
                             k=cfg.k, random_state=cfg.seed, embeddings_root=root,
                             progress=cfg.progress)
        artifacts.stamp_step(path / artifacts.MANIFEST, "reduce", inputs,
                             f"embeddings run {path.name!r}")
        steps.out(f"maps and clusters written to {written}")

    steps.run("reduce", why or "the maps are missing", work)


def _evaluate_step(cfg: BuildConfig, steps: _Steps, dataset_path: Path, store: Path,
                   path: Path) -> None:
    _, model_sha = artifacts.verify_model_file(cfg.model_id, store)
    splits = _eval_splits(cfg, dataset_path, steps)
    inputs = {"model_run": cfg.model_id, "model_sha256": model_sha,
              "dataset": artifacts.dataset_identity(dataset_path), "splits": list(splits)}
    manifest = artifacts.read_json(path / artifacts.MANIFEST, f"embeddings run {path.name!r}")
    why = _why(manifest, "evaluate", inputs, f"embeddings run {path}", "no scores yet")
    if why is None and manifest.get("evaluation"):
        steps.skip("evaluate", f"inputs unchanged, scores in {path / artifacts.MANIFEST}")
        return

    def work() -> None:
        from tqdm.auto import tqdm

        from app.ml.evaluate import evaluate_dataset

        with tqdm(desc=f"evaluate {'+'.join(splits)}", unit="tile",
                  disable=not cfg.progress) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            score = evaluate_dataset(cfg.model_id, dataset_path, splits=tuple(splits),
                                     store=store, progress=progress)
        artifacts.write_evaluation(path, {
            "model_run": cfg.model_id, "model_sha256": model_sha,
            "dataset": dataset_path.name, "splits": list(splits),
            "created": artifacts.now_iso(), "scores": score.to_dict(),
        })
        artifacts.stamp_step(path / artifacts.MANIFEST, "evaluate", inputs,
                             f"embeddings run {path.name!r}")
        for line in score.summary_lines():
            steps.out(line)

    steps.run("evaluate", why or "no scores yet", work)


def _eval_splits(cfg: BuildConfig, dataset_path: Path, steps: _Steps) -> tuple[str, ...]:
    """The splits to score: ``--eval-splits``; the default ``test`` becomes ``val`` when the
    dataset has no test tile (a few scenes), as training's held-out score does."""
    splits = tuple(cfg.eval_splits)
    counts = artifacts.read_json(dataset_path / artifacts.DATASET_MANIFEST,
                                 f"dataset {dataset_path}").get("counts", {})
    if splits == ("test",) and not counts.get("test") and counts.get("val"):
        steps.out(f"{steps.header('evaluate')}: the dataset has no test tiles: scoring the "
                  "val split instead")
        return ("val",)
    return splits


# --------------------------------------------------------------------------- summary


def serve_command(embeddings_run: str, model_run: str, *, datasets_dir: Path,
                  model_store: Path, embeddings_root: Path) -> str:
    """The command that serves this build's run: ``serve`` with both run ids, after the
    environment variables that point it at folders other than the defaults."""
    env = []
    for name, path, default in (
        ("UNET_LENS_MODEL_STORE", model_store, config.REPO_ROOT / "model_store"),
        ("UNET_LENS_EMBEDDINGS", embeddings_root, config.REPO_ROOT / "embeddings"),
        ("UNET_LENS_DATASETS", datasets_dir, config.REPO_ROOT / "datasets"),
    ):
        if Path(path).resolve() != default.resolve():
            env.append(f"{name}={shlex.quote(str(Path(path).resolve()))}")
    argv = ["python", "-m", "app", "serve", "--embeddings-run", embeddings_run,
            "--model-run", model_run]
    return " ".join([*env, *(shlex.quote(a) for a in argv)])


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)


def summary_lines(result: BuildResult, model_store: Path, emb_path: Path,
                  seconds: float) -> list[str]:
    """The summary ``build`` ends with: what each step did, the scores, where the run is and
    the command that serves it."""
    states = ", ".join(f"{s.name} {s.state}" for s in result.steps)
    lines = [f"build {result.config.run_id} finished in {_duration(seconds)} ({states})"]
    ds = artifacts.read_json(result.dataset_path / artifacts.DATASET_MANIFEST, "dataset")
    c = ds.get("counts", {})
    lines.append(f"  dataset     {_rel(result.dataset_path)}: {c.get('scenes')} scenes, "
                 f"{c.get('tiles')} tiles (train {c.get('train')}, val {c.get('val')}, "
                 f"test {c.get('test')})")
    model = artifacts.read_model_manifest(result.model_run, model_store)
    made = ("imported" if model.get("imported") else "given, not retrained") \
        if result.config.model_run else "trained"
    lines.append(f"  model       {_rel(model_store / result.model_run)} ({made})")
    emb = artifacts.read_json(emb_path / artifacts.MANIFEST, "embeddings run")
    counts = emb.get("counts", {})
    reduce = emb.get("reduce") or {}
    maps = ", ".join((reduce.get("params") or {}).get("methods", [])) or "none"
    lines.append(f"  embeddings  {_rel(emb_path)}: {counts.get('tiles')} tiles x "
                 f"{counts.get('dims')} dims, maps {maps}, k = {reduce.get('chosen_k')}")
    lines += score_lines(emb.get("evaluation"), model.get("metrics") or {})
    lines.append(f"serve it:     {result.serve_command}")
    return lines


_LABELS = {"precision": "precision", "recall": "recall", "f1": "F1", "iou": "IoU"}


def _fmt(scores: dict, keys: Sequence[str]) -> str:
    return "  ".join(f"{_LABELS.get(k, k)} {scores[k]:.3f}" for k in keys
                     if isinstance(scores.get(k), (int, float)))


def score_lines(evaluation: dict | None, train_metrics: dict) -> list[str]:
    """The held-out scores: the evaluate step's when there are, else training's own."""
    keys = ("precision", "recall", "f1", "iou")
    if evaluation:
        scores = evaluation.get("scores") or {}
        overall = scores.get("overall") if isinstance(scores.get("overall"), dict) else {}
        counts = scores.get("counts") or {}
        line = (f"  scores      {'+'.join(evaluation.get('splits', []))} split "
                f"({counts.get('scenes')} scenes, every pixel once), model "
                f"{evaluation.get('model_run')}: pixel {_fmt(overall, keys)}")
        building = overall.get("building") if isinstance(overall.get("building"), dict) else {}
        if isinstance(building.get("f1"), (int, float)):
            line += f"; building F1 {building['f1']:.3f} (IoU >= {building.get('iou')})"
        return [line]
    test = train_metrics.get("test")
    if isinstance(test, dict):
        return [f"  scores      held-out {train_metrics.get('test_split', 'test')} pixels "
                f"(from training): {_fmt(test, keys)}"]
    return ["  scores      none (no evaluate step and no training metrics)"]


__all__ = [
    "SOURCES",
    "STEPS",
    "BuildConfig",
    "BuildResult",
    "StepResult",
    "check_config",
    "downscaled",
    "run_build",
    "serve_command",
    "source_scenes",
    "write_source_dataset",
]
