"""The only owner of the on-disk formats of ``model_store/<run>/`` and ``embeddings/<run>/``.

Every run directory is written atomically (a temp dir next to it, then a rename), carries a
``manifest.json`` with its parameters, library versions and the SHA-256 of its files, and is
keyed by a run id that is a plain slug (never a path). Reads AND writes go through this module:
the file names below are its constants (``MANIFEST``, ``VECTORS_FILE``, ``tile_file``...), and
the writers (``save_model_run``, ``create_vectors``, ``save_tile_image``, ``write_tiles_table``,
``write_embeddings_manifest``, ``write_reduced``, ``write_files``) are what the pipeline, the
extractor and the test fixture all call.

model_store/<run>/
    model.keras          Keras 3 archive, loaded with ``safe_mode=True, compile=False``
                         (an imported legacy model: model.h5, named by manifest "model_file")
    manifest.json        {"format": "unet-lens-model/1", run_id, created, preset, input_size,
                          architecture, dataset, split, params, metrics, history, versions,
                          files: {"model.keras": sha256}, build: {"train": stamp} (when
                          ``build`` trained it)}; an imported run adds
                          model_file, imported {source_name, source_sha256, custom_objects,
                          detected, overrides, check}, adapter {...} and embedding_layer
    history.csv          one row per epoch

embeddings/<run>/
    manifest.json        {"format": "unet-lens-embeddings/1", run_id, created, model_run,
                          model_sha256, layer, representation, dataset, counts, params,
                          versions, files: {name: sha256}, reduce: {...} (after reduce),
                          evaluation: {model_run, model_sha256, dataset, splits, created,
                          scores} (after build's evaluate step), build: {step: stamp}}
    tiles.parquet        one row per tile: tile_id, source, scene_id, group, split, x, y, size,
                          phase, disaster, ..., metrics (precision, recall, f1, iou,
                          true_fraction, pred_fraction, building_count, dmg_*)
    vectors.npy          (n_tiles, dims) float16/float32, row i = tiles.parquet row i
    thumbs/<tile_id>.jpg         tile thumbnail (hover)
    thumbs/<tile_id>_true.png    ground-truth mask (L, 0/255), when known
    thumbs/<tile_id>_pred.png    predicted mask (L, 0/255)
    thumbs/<tile_id>_overlay.jpg TP/FP/FN overlay (or prediction overlay without truth)
    images/<tile_id>.jpg         the full-resolution tile, JPEG q90 (for Grad-CAM on request;
                                  JPEG keeps the committed demo small)
    reduced/             written by ``reduce`` (re-runnable without the network):
        coords.parquet   tile_id, pca_x, pca_y, pca_z, tsne_x, tsne_y, umap_x, umap_y, ...,
                          cluster, silhouette
        sweep.json       K-means sweep (k, inertia, silhouette, best_k, chosen_k, agreement)
        labels.npy       (len(k), n_tiles) int32 cluster labels for every k of the sweep
        reducers/        pca.npz, tsne.pkl, umap.pkl (+ sha256 in manifest["reduce"]["files"])
    ood/                 written by ``reduce`` / ``python -m app ood`` (``app.ml.ood``):
        index.npz        train_ids, train_vectors (in the metric's space), calibration (sorted
                          held-out k-NN distances), mean + whiten (Mahalanobis); plain arrays
        scores.parquet   tile_id, ood_score (percentile 0-100), ood_distance, ood_nearest
                          (+ params, sha256 in manifest["ood"])
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from app import config
from app.fsutil import atomic_dir, sha256_file, write_bytes_atomic

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import pandas as pd
    from PIL import Image

T = TypeVar("T")

MODEL_FORMAT = "unet-lens-model/1"
EMBEDDINGS_FORMAT = "unet-lens-embeddings/1"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
THUMB_KINDS = ("thumb", "true", "pred", "overlay", "image")

# --------------------------------------------------------------------------- the path table
# Every file name of a run, relative to its folder. Nothing else spells them.

MANIFEST = "manifest.json"
MODEL_FILE = "model.keras"
#: An imported legacy model is stored under this name (an imported .keras under MODEL_FILE).
MODEL_FILE_H5 = "model.h5"
#: The only names ``manifest["model_file"]`` may give (never a path from a manifest).
MODEL_FILES = (MODEL_FILE, MODEL_FILE_H5)
HISTORY_FILE = "history.csv"
TILES_FILE = "tiles.parquet"
VECTORS_FILE = "vectors.npy"
THUMBS_DIR = "thumbs"
IMAGES_DIR = "images"
REDUCED_DIR = "reduced"
COORDS_FILE = "coords.parquet"  # in REDUCED_DIR
SWEEP_FILE = "sweep.json"  # in REDUCED_DIR
LABELS_FILE = "labels.npy"  # in REDUCED_DIR
REDUCERS_DIR = "reducers"  # in REDUCED_DIR
OOD_DIR = "ood"
OOD_INDEX_FILE = "index.npz"  # in OOD_DIR
OOD_SCORES_FILE = "scores.parquet"  # in OOD_DIR
#: Files of ``embeddings/<run>/`` whose SHA-256 ``manifest["files"]`` records.
EMBEDDINGS_HASHED = (VECTORS_FILE, TILES_FILE)

#: kind → (folder, file name suffix) of a tile's image files (see ``tile_file``).
_TILE_FILES = {
    "thumb": (THUMBS_DIR, ".jpg"),
    "true": (THUMBS_DIR, "_true.png"),
    "pred": (THUMBS_DIR, "_pred.png"),
    "overlay": (THUMBS_DIR, "_overlay.jpg"),
    "image": (IMAGES_DIR, ".jpg"),
}
#: JPEG qualities (hover thumbnail, overlay, full tile: "JPEG q90") and the PNG compression of
#: the mask files.
TILE_SAVE_OPTIONS: dict[str, dict[str, int]] = {
    "thumb": {"quality": 85},
    "true": {"compress_level": 1},
    "pred": {"compress_level": 1},
    "overlay": {"quality": 90},
    "image": {"quality": 90},
}


def tile_file(kind: str, tile_id: str) -> str:
    """The path of a tile's ``kind`` image file relative to its run folder."""
    folder, suffix = _TILE_FILES[kind]
    return f"{folder}/{tile_id}{suffix}"


def reduced_file(name: str) -> str:
    """The key of a ``reduced/`` file in ``manifest["reduce"]["files"]`` (its relative path)."""
    return f"{REDUCED_DIR}/{name}"


def ood_file(name: str) -> str:
    """The key of an ``ood/`` file in ``manifest["ood"]["files"]`` (its relative path)."""
    return f"{OOD_DIR}/{name}"


def reducer_file(name: str) -> str:
    """The key of a stored reducer file in ``manifest["reduce"]["files"]``."""
    return f"{REDUCED_DIR}/{REDUCERS_DIR}/{name}"


class ArtifactError(RuntimeError):
    """A stored run is missing, corrupt or inconsistent. The message names the file."""


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a result (only those already imported)."""
    out = {"python": platform.python_version()}
    for name in (
        "numpy", "pandas", "pyarrow", "sklearn", "tensorflow", "keras", "umap", "openTSNE",
        "PIL",
    ):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def validate_run_id(run_id: str) -> str:
    """Run ids are slugs: a browser or CLI can never smuggle a path through one."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ArtifactError(
            "A run id must be 1-128 letters, digits, '_', '-' or '.', starting with a letter "
            f"or digit. Got {run_id!r} instead."
        )
    return run_id


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ArtifactError(f"{what}: {path} is missing.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{what}: {path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{what}: {path} must hold a JSON object.")
    return data


def list_runs(root: Path) -> list[str]:
    """Run ids under ``root`` that have a manifest, sorted."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


# --------------------------------------------------------------------------- model store


def model_dir(run_id: str, store: Path | None = None) -> Path:
    return (store or config.MODEL_STORE) / validate_run_id(run_id)


def save_model_run(
    model: keras.Model,
    run_id: str,
    *,
    preset: str,
    input_size: int,
    dataset: dict,
    split: dict,
    params: dict,
    metrics: dict,
    history: list[dict],
    architecture: dict | None = None,
    store: Path | None = None,
) -> Path:
    """Write ``model_store/<run_id>/`` atomically and return its path."""
    final = model_dir(run_id, store)
    final.parent.mkdir(parents=True, exist_ok=True)
    import keras  # lazy: TensorFlow/Keras cost seconds; only model writers and loaders need it

    with atomic_dir(final) as tmp:
        # An uncompiled copy: no optimizer state in the archive (a third of the size).
        bare = keras.Model(model.inputs, model.outputs, name=model.name)
        bare.save(tmp / MODEL_FILE)
        if history:
            keys = list(history[0])
            lines = [",".join(keys)] + [
                ",".join(f"{row.get(k, '')}" for k in keys) for row in history
            ]
            (tmp / HISTORY_FILE).write_text("\n".join(lines) + "\n")
        manifest = {
            "format": MODEL_FORMAT,
            "run_id": run_id,
            "created": now_iso(),
            "preset": preset,
            "input_size": input_size,
            "architecture": architecture or {},
            "dataset": dataset,
            "split": split,
            "params": params,
            "metrics": metrics,
            "history": history,
            "versions": versions(),
            "files": {MODEL_FILE: sha256_file(tmp / MODEL_FILE)},
        }
        write_json(tmp / MANIFEST, manifest)
    return final


def read_model_manifest(run_id: str, store: Path | None = None) -> dict:
    path = model_dir(run_id, store) / MANIFEST
    manifest = read_json(path, f"model run {run_id!r}")
    if manifest.get("format") != MODEL_FORMAT:
        raise ArtifactError(
            f"model run {run_id!r}: {path} has format {manifest.get('format')!r}, "
            f"expected {MODEL_FORMAT!r}."
        )
    return manifest


def model_file_name(manifest: dict, run_id: str = "") -> str:
    """The model file of a run: ``model.keras``, or what an imported run's manifest names
    (one of ``MODEL_FILES``; anything else is refused, never used as a path)."""
    name = manifest.get("model_file", MODEL_FILE)
    if name not in MODEL_FILES:
        raise ArtifactError(f"model run {run_id!r}: manifest 'model_file' must be one of "
                            f"{list(MODEL_FILES)}. Got {name!r} instead.")
    return name


def model_default_layer(manifest: dict) -> str:
    """The layer a model run embeds from by default: an imported run's ``embedding_layer``,
    else the native U-Net's ``bottleneck``."""
    return str(manifest.get("embedding_layer") or "bottleneck")


def verify_model_file(run_id: str, store: Path | None = None) -> tuple[Path, str]:
    """Check the model file exists and matches the manifest's SHA-256; return (path, sha)."""
    manifest = read_model_manifest(run_id, store)
    name = model_file_name(manifest, run_id)
    path = model_dir(run_id, store) / name
    if not path.is_file():
        raise ArtifactError(f"model run {run_id!r}: {path} is missing.")
    expected = manifest.get("files", {}).get(name)
    found = sha256_file(path)
    if expected != found:
        raise ArtifactError(
            f"model run {run_id!r}: {path} has SHA-256 {found[:12]}…, the manifest expects "
            f"{str(expected)[:12]}…. The file was changed or corrupted; re-train or restore it."
        )
    return path, found


def load_model(run_id: str, store: Path | None = None) -> keras.Model:
    """Load a stored model after checking its hash; ``safe_mode`` on, no compile.

    An imported run (manifest ``adapter``) loads the original file as it was imported (with
    the classes of its ``--custom-objects`` module, whose code the importer chose to trust)
    and returns the canonical model built around it (``app.ml.adapter``): input ``image``
    0..255, ``logits``, ``mask``, the user's layers under their own names.
    """
    path, _ = verify_model_file(run_id, store)
    manifest = read_model_manifest(run_id, store)
    import keras  # lazy: see save_model_run

    adapter = manifest.get("adapter")
    custom: dict = {}
    if adapter:
        from app.ml.importer import custom_objects_from  # lazy: imported runs only

        custom = custom_objects_from((manifest.get("imported") or {}).get("custom_objects"))
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True,
                                        custom_objects=custom or None)
    except Exception as exc:  # keras raises many types for a corrupt archive
        raise ArtifactError(f"model run {run_id!r}: could not load {path}: {exc}") from exc
    if not adapter:
        return model
    from app.ml.adapter import build_canonical  # lazy: TensorFlow layers

    try:
        return build_canonical(model, adapter)
    except Exception as exc:
        raise ArtifactError(f"model run {run_id!r}: the imported model in {path} no longer fits "
                            f"its manifest's adapter ({exc}); import it again.") from exc


def save_imported_model_run(
    source: Path, run_id: str, *, kind: str, fields: dict, expected_sha256: str | None,
    store: Path | None = None,
) -> Path:
    """Copy an imported model file byte for byte into ``model_store/<run_id>/`` (temp folder,
    then rename) with its manifest; the file is never re-saved. ``fields`` are the manifest
    entries the importer detected and resolved; the copy's SHA-256 must be ``expected_sha256``
    (the file did not change while it was being checked)."""
    name = MODEL_FILE if kind == "keras" else MODEL_FILE_H5
    final = model_dir(run_id, store)
    with atomic_dir(final) as tmp:
        digest = hashlib.sha256()
        with Path(source).open("rb") as src, (tmp / name).open("wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
        sha = digest.hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise ArtifactError(f"{source} changed while it was being imported; import it again.")
        manifest = {
            "format": MODEL_FORMAT,
            "run_id": run_id,
            "created": now_iso(),
            "preset": "imported",
            "input_size": None,
            "architecture": {},
            "dataset": {},
            "split": {},
            "params": {},
            "metrics": {},
            "history": [],
            **fields,
            "model_file": name,
            "versions": versions(),
            "files": {name: sha},
        }
        write_json(tmp / MANIFEST, manifest)
    return final


# --------------------------------------------------------------------------- embeddings


def embeddings_dir(run_id: str, root: Path | None = None) -> Path:
    return (root or config.EMBEDDINGS_DIR) / validate_run_id(run_id)


@dataclass
class EmbeddingsRun:
    """A stored embeddings run, loaded lazily (the vectors are memory-mapped).

    ``memo(key, compute)`` keeps what callers derive from the run (fitted reducers, re-clustered
    labels, a feature model) for as long as the run object lives, so a reloaded run never
    serves results of the files it replaced.
    """

    run_id: str
    path: Path
    manifest: dict
    _memo: dict = field(default_factory=dict, repr=False, compare=False)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under ``key``, or ``compute()`` stored there (computed once even
        when threads ask at the same time; a failed compute stores nothing)."""
        try:
            return self._memo[key]
        except KeyError:
            pass
        with self._memo_lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    def memoized(self, key: Hashable) -> bool:
        """Whether ``memo`` holds a value for ``key``."""
        return key in self._memo

    def forget(self, key: Hashable) -> None:
        """Drop the value ``memo`` holds for ``key`` (if any)."""
        self._memo.pop(key, None)

    @classmethod
    def open(
        cls,
        run_id: str,
        root: Path | None = None,
        *,
        model_store: Path | None = None,
        check_model: bool = True,
    ) -> EmbeddingsRun:
        path = embeddings_dir(run_id, root)
        manifest = read_json(path / MANIFEST, f"embeddings run {run_id!r}")
        if manifest.get("format") != EMBEDDINGS_FORMAT:
            raise ArtifactError(
                f"embeddings run {run_id!r}: {path / MANIFEST} has format "
                f"{manifest.get('format')!r}, expected {EMBEDDINGS_FORMAT!r}."
            )
        if check_model:
            model_run = manifest.get("model_run", "")
            _, sha = verify_model_file(model_run, model_store)
            if sha != manifest.get("model_sha256"):
                raise ArtifactError(
                    f"embeddings run {run_id!r} was made with model {model_run!r} of SHA-256 "
                    f"{str(manifest.get('model_sha256'))[:12]}…, but that model is now "
                    f"{sha[:12]}…. Re-run `python -m app embed` for this model."
                )
        return cls(run_id=run_id, path=path, manifest=manifest)

    @property
    def model_run(self) -> str:
        return self.manifest["model_run"]

    @property
    def layer(self) -> str:
        return self.manifest.get("layer", "bottleneck")

    @cached_property
    def tiles(self) -> pd.DataFrame:
        """tiles.parquet joined with reduced/coords.parquet (when reduce has run)."""
        import pandas as pd  # lazy: see _read_parquet

        table = _read_parquet(self.path / TILES_FILE, self.run_id)
        coords_path = self.path / REDUCED_DIR / COORDS_FILE
        if coords_path.is_file():
            coords = _read_parquet(coords_path, self.run_id)
            if len(coords) != len(table) or not (
                coords["tile_id"].to_numpy() == table["tile_id"].to_numpy()
            ).all():
                raise ArtifactError(
                    f"embeddings run {self.run_id!r}: {coords_path} does not list the same "
                    "tiles as tiles.parquet. Re-run `python -m app reduce`."
                )
            table = pd.concat([table, coords.drop(columns=["tile_id"])], axis=1)
        scores = self.ood_scores(table["tile_id"].to_numpy())
        if scores is not None:
            table = pd.concat([table, scores.drop(columns=["tile_id"])], axis=1)
        return table

    def ood_scores(self, tile_ids: np.ndarray | None = None) -> pd.DataFrame | None:
        """``ood/scores.parquet`` when the run has one that lists the same tiles as
        ``tile_ids`` (default: tiles.parquet's), else None: a stale or missing guard never
        breaks the tile table (``ood_problem`` says what is missing)."""
        path = self.path / OOD_DIR / OOD_SCORES_FILE
        if not path.is_file() or not (self.manifest.get("ood") or {}).get("files"):
            return None
        try:
            scores = _read_parquet(path, self.run_id)
            base = (tile_ids if tile_ids is not None else
                    _read_parquet(self.path / TILES_FILE, self.run_id)["tile_id"].to_numpy())
        except ArtifactError:
            return None
        if len(scores) != len(base) or not (scores["tile_id"].to_numpy() == base).all():
            return None
        return scores

    def ood_problem(self) -> str | None:
        """Why the run has no usable out-of-distribution guard, in words (None when it has)."""
        info = self.manifest.get("ood") or {}
        if info.get("files") and (self.path / OOD_DIR / OOD_INDEX_FILE).is_file():
            return None
        if info.get("skipped"):
            return f"embeddings run {self.run_id!r} has no out-of-distribution guard: " \
                   f"{info['skipped']}"
        return (f"embeddings run {self.run_id!r} has no out-of-distribution guard yet; build it "
                f"with `python -m app ood {self.run_id}`.")

    def ood_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``ood/index.npz``, hash-checked against ``manifest["ood"]`` before
        parsing, loaded without pickle; ArtifactError when missing or changed."""
        problem = self.ood_problem()
        if problem:
            raise ArtifactError(problem)
        import io

        hint = f"rebuild it with `python -m app ood {self.run_id}`"
        files = self.manifest["ood"]["files"]
        blob = read_verified_files(self.path / OOD_DIR, {OOD_INDEX_FILE: files.get(
            ood_file(OOD_INDEX_FILE), "")}, (OOD_INDEX_FILE,), hint)[OOD_INDEX_FILE]
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                return {name: np.asarray(npz[name]) for name in npz.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"embeddings run {self.run_id!r}: "
                                f"{self.path / OOD_DIR / OOD_INDEX_FILE}: {exc}; {hint}") from exc

    @cached_property
    def index(self) -> dict[str, int]:
        """tile_id → row. Browser ids are looked up here, never turned into paths directly."""
        return {tid: i for i, tid in enumerate(self.tiles["tile_id"].tolist())}

    @cached_property
    def vectors(self) -> np.ndarray:
        path = self.path / VECTORS_FILE
        if not path.is_file():
            raise ArtifactError(f"embeddings run {self.run_id!r}: {path} is missing.")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ArtifactError(f"embeddings run {self.run_id!r}: {path}: {exc}") from exc
        if arr.ndim != 2 or arr.shape[0] != len(self.tiles):
            raise ArtifactError(
                f"embeddings run {self.run_id!r}: {path} has shape {arr.shape}, expected "
                f"({len(self.tiles)}, dims)."
            )
        return arr

    @cached_property
    def sweep(self) -> dict | None:
        path = self.path / REDUCED_DIR / SWEEP_FILE
        return read_json(path, f"embeddings run {self.run_id!r}") if path.is_file() else None

    @cached_property
    def sweep_labels(self) -> np.ndarray | None:
        path = self.path / REDUCED_DIR / LABELS_FILE
        if not path.is_file():
            return None
        return np.load(path, allow_pickle=False)

    def file_for(self, kind: str, tile_id: str) -> Path | None:
        """The stored image file for a tile id, or None for an unknown id or kind."""
        if kind not in THUMB_KINDS or tile_id not in self.index:
            return None
        path = self.path / tile_file(kind, tile_id)
        return path if path.is_file() else None

    def reducer_dir(self) -> Path:
        return self.path / REDUCED_DIR / REDUCERS_DIR

    def reduce_info(self) -> dict:
        """``manifest["reduce"]``, or an ArtifactError that says to run ``reduce`` first."""
        info = self.manifest.get("reduce")
        if not info:
            raise ArtifactError(
                f"embeddings run {self.run_id!r} has no maps yet. Run `python -m app reduce "
                f"{self.run_id}`."
            )
        return info

    def vectors_float32(self, chunk_rows: int = 4096) -> np.ndarray:
        """The vectors as float32 in memory, cast chunk by chunk from the memory-mapped file
        (bounded extra memory for huge float16 runs)."""
        src = self.vectors
        out = np.empty(src.shape, dtype=np.float32)
        for start in range(0, src.shape[0], chunk_rows):
            out[start:start + chunk_rows] = src[start:start + chunk_rows]
        return out


def _read_parquet(path: Path, run_id: str) -> pd.DataFrame:
    import pandas as pd  # lazy: pandas costs ~0.3 s and most importers only need the paths

    if not path.is_file():
        raise ArtifactError(f"embeddings run {run_id!r}: {path} is missing.")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
        raise ArtifactError(
            f"embeddings run {run_id!r}: {path} is not a readable Parquet table ({exc})."
        ) from exc


# --------------------------------------------------------------------------- embeddings writers


def create_vectors(run_dir: Path, n: int, dims: int, dtype: str) -> np.ndarray:
    """A writable (n, dims) memory map of ``vectors.npy`` in ``run_dir`` (filled row by row, so
    memory stays bounded whatever the number of tiles); ``flush()`` it when done."""
    return np.lib.format.open_memmap(Path(run_dir) / VECTORS_FILE, mode="w+",
                                     dtype=np.dtype(dtype), shape=(int(n), int(dims)))


def write_vectors(run_dir: Path, vectors: np.ndarray) -> None:
    """``vectors.npy`` of a run written in one go (small runs, the test fixture)."""
    np.save(Path(run_dir) / VECTORS_FILE, np.asarray(vectors), allow_pickle=False)


def write_tiles_table(run_dir: Path, table: pd.DataFrame) -> None:
    """``tiles.parquet``: one row per tile, row i = vectors row i."""
    table.to_parquet(Path(run_dir) / TILES_FILE, index=False)


def make_tile_dirs(run_dir: Path) -> None:
    """The folders ``save_tile_image`` writes into."""
    for folder in (THUMBS_DIR, IMAGES_DIR):
        (Path(run_dir) / folder).mkdir(parents=True, exist_ok=True)


def save_tile_image(run_dir: Path, kind: str, tile_id: str, image: Image.Image) -> None:
    """Save one of a tile's image files (``kind`` of ``THUMB_KINDS``) where ``file_for`` finds
    it, with the format's JPEG quality / PNG compression."""
    image.save(Path(run_dir) / tile_file(kind, tile_id), **TILE_SAVE_OPTIONS[kind])


def hash_files(folder: Path, names: tuple[str, ...] = EMBEDDINGS_HASHED) -> dict[str, str]:
    """``{name: sha256}`` of files in ``folder`` (the manifest's ``files``)."""
    return {name: sha256_file(Path(folder) / name) for name in names}


def write_embeddings_manifest(run_dir: Path, manifest: dict) -> None:
    """``manifest.json`` of an embeddings run (``format`` is filled in when missing)."""
    write_json(Path(run_dir) / MANIFEST, {"format": EMBEDDINGS_FORMAT, **manifest})


def write_files(folder: Path, payloads: Mapping[str, bytes]) -> dict[str, str]:
    """Write each ``name → bytes`` atomically into ``folder``; return ``{name: sha256}`` of the
    bytes written (what a reader later checks before parsing them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, data in payloads.items():
        hashes[name] = hashlib.sha256(data).hexdigest()
        write_bytes_atomic(folder / name, data)
    return hashes


def read_verified_files(
    folder: Path, expected_sha256: Mapping[str, str], names: tuple[str, ...], hint: str
) -> dict[str, bytes]:
    """The bytes of each file of ``names`` in ``folder``, read once and compared with
    ``expected_sha256`` BEFORE anyone parses them (the bytes hashed are the bytes returned).
    Raises ``ArtifactError`` (with ``hint`` appended) for a missing, unlisted or changed file."""
    folder = Path(folder)
    blobs: dict[str, bytes] = {}
    for name in names:
        path = folder / name
        expected = (expected_sha256 or {}).get(name)
        if not expected:
            raise ArtifactError(
                f"no expected SHA-256 for {name} (the manifest does not list it); {hint}")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"missing file {path}; {hint}") from None
        except OSError as exc:
            raise ArtifactError(f"could not load {path}: {exc}; {hint}") from exc
        found = hashlib.sha256(data).hexdigest()
        if found != expected.strip().lower():
            raise ArtifactError(
                f"SHA-256 mismatch for {path}: expected {expected}, found {found}; the file was "
                f"changed or corrupted after it was written; {hint}"
            )
        blobs[name] = data
    return blobs


def write_reduced(
    run_dir: Path,
    coords: pd.DataFrame,
    sweep: dict,
    labels: np.ndarray,
    reducer_payloads: Mapping[str, Mapping[str, bytes]],
) -> dict[str, str]:
    """Write ``reduced/`` of the run in ``run_dir`` atomically (coords, sweep, K-means labels
    of every k, and each method's fitted reducer files, ``{method: {name: bytes}}``); return
    ``manifest["reduce"]["files"]`` (relative path → sha256)."""
    with atomic_dir(Path(run_dir) / REDUCED_DIR) as tmp:
        coords.to_parquet(tmp / COORDS_FILE, index=False)
        write_json(tmp / SWEEP_FILE, sweep)
        np.save(tmp / LABELS_FILE, np.asarray(labels, dtype=np.int32), allow_pickle=False)
        files = {reduced_file(name): sha256_file(tmp / name)
                 for name in (COORDS_FILE, SWEEP_FILE, LABELS_FILE)}
        for payloads in reducer_payloads.values():
            for name, sha in write_files(tmp / REDUCERS_DIR, payloads).items():
                files[reducer_file(name)] = sha
    return files


def write_ood(run_dir: Path, arrays: Mapping[str, np.ndarray], scores: pd.DataFrame) -> dict[str, str]:
    """Write ``ood/`` of the run in ``run_dir`` atomically (the index arrays, plain, and the
    per-tile scores table); return ``manifest["ood"]["files"]`` (relative path → sha256)."""
    with atomic_dir(Path(run_dir) / OOD_DIR) as tmp:
        write_npz(tmp / OOD_INDEX_FILE, arrays)
        scores.to_parquet(tmp / OOD_SCORES_FILE, index=False)
        files = {ood_file(name): sha256_file(tmp / name)
                 for name in (OOD_INDEX_FILE, OOD_SCORES_FILE)}
    return files


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` of plain arrays (no object arrays: readable with ``allow_pickle=False``) whose
    bytes depend only on the arrays (fixed zip timestamps), so a rebuilt run hashes the same."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            arr = np.asarray(value)
            if arr.dtype == object:
                raise ValueError(f"{path}: array {name!r} has dtype object; store plain arrays.")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def update_embeddings_manifest(run: EmbeddingsRun, **entries: Any) -> dict:
    """Re-read the run's manifest, set ``entries`` in it, write it back; return it."""
    path = run.path / MANIFEST
    manifest = read_json(path, f"embeddings run {run.run_id!r}")
    manifest.update(entries)
    write_json(path, manifest)
    return manifest


__all__ = [
    "COORDS_FILE",
    "EMBEDDINGS_FORMAT",
    "EMBEDDINGS_HASHED",
    "HISTORY_FILE",
    "IMAGES_DIR",
    "LABELS_FILE",
    "MANIFEST",
    "MODEL_FILE",
    "MODEL_FILES",
    "MODEL_FILE_H5",
    "MODEL_FORMAT",
    "OOD_DIR",
    "OOD_INDEX_FILE",
    "OOD_SCORES_FILE",
    "REDUCED_DIR",
    "REDUCERS_DIR",
    "SWEEP_FILE",
    "THUMBS_DIR",
    "THUMB_KINDS",
    "TILES_FILE",
    "TILE_SAVE_OPTIONS",
    "VECTORS_FILE",
    "ArtifactError",
    "EmbeddingsRun",
    "atomic_dir",
    "create_vectors",
    "embeddings_dir",
    "hash_files",
    "list_runs",
    "load_model",
    "make_tile_dirs",
    "model_default_layer",
    "model_dir",
    "model_file_name",
    "ood_file",
    "read_json",
    "read_model_manifest",
    "read_verified_files",
    "reduced_file",
    "reducer_file",
    "save_imported_model_run",
    "save_model_run",
    "save_tile_image",
    "sha256_file",
    "tile_file",
    "update_embeddings_manifest",
    "validate_run_id",
    "verify_model_file",
    "versions",
    "write_embeddings_manifest",
    "write_files",
    "write_json",
    "write_npz",
    "write_ood",
    "write_reduced",
    "write_tiles_table",
    "write_vectors",
]


def read_pca_variance(run: EmbeddingsRun) -> np.ndarray | None:
    """PCA's explained variance ratios from ``reduced/reducers/pca.npz`` (plain arrays, never a
    pickle), or None when the run stores none or the file cannot be read."""
    path = run.reducer_dir() / "pca.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "explained_variance_ratio" in npz:
                return np.asarray(npz["explained_variance_ratio"])
    except (OSError, ValueError):
        return None
    return None


__all__.append("read_pca_variance")


# --------------------------------------------------------------------------- build steps
# ``python -m app build`` records, in the manifest of what each step wrote, the inputs that step
# was run with (``manifest["build"][step] = {"key", "inputs", "finished"}``; ``key`` is the
# SHA-256 of the inputs as canonical JSON). A rerun whose inputs have the same key skips the
# step. Inputs name the upstream results by content (dataset table hash and creation time,
# model SHA-256, vectors SHA-256), so a redone step makes every step that reads it redo too.

BUILD_KEY = "build"
#: The manifest of a tile dataset folder (format ``unet-lens-tiles/1``, see app.data.dataset).
DATASET_MANIFEST = MANIFEST
DATASET_TABLE = "tiles.parquet"


def step_key(inputs: Mapping[str, Any]) -> str:
    """SHA-256 of ``inputs`` as canonical JSON (sorted keys): equal inputs, equal key."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def build_stamp(manifest: Mapping[str, Any] | None, step: str) -> dict | None:
    """What ``stamp_step`` recorded for ``step`` in ``manifest``, or None."""
    stamps = (manifest or {}).get(BUILD_KEY)
    stamp = stamps.get(step) if isinstance(stamps, dict) else None
    return stamp if isinstance(stamp, dict) else None


def step_state(manifest: Mapping[str, Any] | None, step: str, inputs: Mapping[str, Any]) -> str:
    """``"unchanged"`` when ``manifest`` records ``step`` with these inputs, ``"changed"`` when
    it records other inputs, ``"unrecorded"`` when it records none."""
    stamp = build_stamp(manifest, step)
    if stamp is None:
        return "unrecorded"
    return "unchanged" if stamp.get("key") == step_key(inputs) else "changed"


def changed_inputs(manifest: Mapping[str, Any] | None, step: str,
                   inputs: Mapping[str, Any]) -> list[str]:
    """The top-level input names whose value differs from what ``step`` recorded (for messages)."""
    old = (build_stamp(manifest, step) or {}).get("inputs") or {}
    new = json.loads(json.dumps(inputs, default=_json_default))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def stamp_step(manifest_path: Path, step: str, inputs: Mapping[str, Any], what: str) -> dict:
    """Record in ``manifest_path`` (re-read, then rewritten atomically) that ``step`` finished
    with ``inputs``; return the manifest. Called after the step's own atomic write, so an
    interrupted step leaves no stamp and is redone."""
    manifest = read_json(Path(manifest_path), what)
    stamps = manifest.get(BUILD_KEY) if isinstance(manifest.get(BUILD_KEY), dict) else {}
    stamps[step] = {"key": step_key(inputs),
                    "inputs": json.loads(json.dumps(inputs, default=_json_default)),
                    "finished": now_iso()}
    manifest[BUILD_KEY] = stamps
    write_json(Path(manifest_path), manifest)
    return manifest


def read_manifest_if_any(path: Path, what: str) -> dict | None:
    """The JSON manifest at ``path``, or None when there is none (a step not run yet)."""
    return read_json(Path(path), what) if Path(path).is_file() else None


def dataset_identity(dataset_path: Path) -> dict[str, str]:
    """What a dataset is, for the inputs of the steps that read it: its tile table's SHA-256
    and its creation time (a re-tiled dataset is a new one)."""
    path = Path(dataset_path)
    manifest = read_json(path / DATASET_MANIFEST, f"dataset {path}")
    table = path / DATASET_TABLE
    if not table.is_file():
        raise ArtifactError(f"dataset {path}: {table} is missing.")
    return {"tiles_sha256": sha256_file(table), "created": str(manifest.get("created", ""))}


def write_evaluation(run_dir: Path, evaluation: Mapping[str, Any]) -> dict:
    """``manifest["evaluation"]`` of an embeddings run: the held-out scores of its model on its
    dataset (``build``'s evaluate step); return the manifest."""
    path = Path(run_dir) / MANIFEST
    manifest = read_json(path, f"embeddings run {Path(run_dir).name!r}")
    manifest["evaluation"] = dict(evaluation)
    write_json(path, manifest)
    return manifest


__all__ += [
    "BUILD_KEY",
    "build_stamp",
    "changed_inputs",
    "dataset_identity",
    "read_manifest_if_any",
    "stamp_step",
    "step_key",
    "step_state",
    "write_evaluation",
]
