"""The only owner of the on-disk formats of ``model_store/<run>/`` and ``embeddings/<run>/``.

Every run directory is written atomically (a temp dir next to it, then a rename), carries a
``manifest.json`` with its parameters, library versions and the SHA-256 of its files, and is
keyed by a run id that is a plain slug (never a path).

model_store/<run>/
    model.keras          Keras 3 archive, loaded with ``safe_mode=True, compile=False``
    manifest.json        {"format": "unet-lens-model/1", run_id, created, preset, input_size,
                          architecture, dataset, split, params, metrics, history, versions,
                          files: {"model.keras": sha256}}
    history.csv          one row per epoch

embeddings/<run>/
    manifest.json        {"format": "unet-lens-embeddings/1", run_id, created, model_run,
                          model_sha256, layer, representation, dataset, counts, params,
                          versions, files: {name: sha256}, reduce: {...} (after reduce)}
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
"""

from __future__ import annotations

import json
import platform
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app import config
from app.fsutil import atomic_dir, sha256_file, write_bytes_atomic

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import pandas as pd

MODEL_FORMAT = "unet-lens-model/1"
EMBEDDINGS_FORMAT = "unet-lens-embeddings/1"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
THUMB_KINDS = ("thumb", "true", "pred", "overlay", "image")


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
        if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file()
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
    import keras

    with atomic_dir(final) as tmp:
        # An uncompiled copy: no optimizer state in the archive (a third of the size).
        bare = keras.Model(model.inputs, model.outputs, name=model.name)
        bare.save(tmp / "model.keras")
        if history:
            keys = list(history[0])
            lines = [",".join(keys)] + [
                ",".join(f"{row.get(k, '')}" for k in keys) for row in history
            ]
            (tmp / "history.csv").write_text("\n".join(lines) + "\n")
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
            "files": {"model.keras": sha256_file(tmp / "model.keras")},
        }
        write_json(tmp / "manifest.json", manifest)
    return final


def read_model_manifest(run_id: str, store: Path | None = None) -> dict:
    path = model_dir(run_id, store) / "manifest.json"
    manifest = read_json(path, f"model run {run_id!r}")
    if manifest.get("format") != MODEL_FORMAT:
        raise ArtifactError(
            f"model run {run_id!r}: {path} has format {manifest.get('format')!r}, "
            f"expected {MODEL_FORMAT!r}."
        )
    return manifest


def verify_model_file(run_id: str, store: Path | None = None) -> tuple[Path, str]:
    """Check model.keras exists and matches the manifest's SHA-256; return (path, sha)."""
    manifest = read_model_manifest(run_id, store)
    path = model_dir(run_id, store) / "model.keras"
    if not path.is_file():
        raise ArtifactError(f"model run {run_id!r}: {path} is missing.")
    expected = manifest.get("files", {}).get("model.keras")
    found = sha256_file(path)
    if expected != found:
        raise ArtifactError(
            f"model run {run_id!r}: {path} has SHA-256 {found[:12]}…, the manifest expects "
            f"{str(expected)[:12]}…. The file was changed or corrupted; re-train or restore it."
        )
    return path, found


def load_model(run_id: str, store: Path | None = None) -> keras.Model:
    """Load a stored model after checking its hash; ``safe_mode`` on, no compile."""
    path, _ = verify_model_file(run_id, store)
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises many types for a corrupt archive
        raise ArtifactError(f"model run {run_id!r}: could not load {path}: {exc}") from exc


# --------------------------------------------------------------------------- embeddings


def embeddings_dir(run_id: str, root: Path | None = None) -> Path:
    return (root or config.EMBEDDINGS_DIR) / validate_run_id(run_id)


@dataclass
class EmbeddingsRun:
    """A stored embeddings run, loaded lazily (the vectors are memory-mapped)."""

    run_id: str
    path: Path
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False)

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
        manifest = read_json(path / "manifest.json", f"embeddings run {run_id!r}")
        if manifest.get("format") != EMBEDDINGS_FORMAT:
            raise ArtifactError(
                f"embeddings run {run_id!r}: {path / 'manifest.json'} has format "
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
        import pandas as pd

        table = _read_parquet(self.path / "tiles.parquet", self.run_id)
        coords_path = self.path / "reduced" / "coords.parquet"
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
        return table

    @cached_property
    def index(self) -> dict[str, int]:
        """tile_id → row. Browser ids are looked up here, never turned into paths directly."""
        return {tid: i for i, tid in enumerate(self.tiles["tile_id"].tolist())}

    @cached_property
    def vectors(self) -> np.ndarray:
        path = self.path / "vectors.npy"
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
        path = self.path / "reduced" / "sweep.json"
        return read_json(path, f"embeddings run {self.run_id!r}") if path.is_file() else None

    @cached_property
    def sweep_labels(self) -> np.ndarray | None:
        path = self.path / "reduced" / "labels.npy"
        if not path.is_file():
            return None
        return np.load(path, allow_pickle=False)

    def file_for(self, kind: str, tile_id: str) -> Path | None:
        """The stored image file for a tile id, or None for an unknown id or kind."""
        if kind not in THUMB_KINDS or tile_id not in self.index:
            return None
        if kind == "image":
            path = self.path / "images" / f"{tile_id}.jpg"
        elif kind == "thumb":
            path = self.path / "thumbs" / f"{tile_id}.jpg"
        elif kind == "overlay":
            path = self.path / "thumbs" / f"{tile_id}_overlay.jpg"
        else:
            path = self.path / "thumbs" / f"{tile_id}_{kind}.png"
        return path if path.is_file() else None

    def reducer_dir(self) -> Path:
        return self.path / "reduced" / "reducers"


def _read_parquet(path: Path, run_id: str) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise ArtifactError(f"embeddings run {run_id!r}: {path} is missing.")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
        raise ArtifactError(
            f"embeddings run {run_id!r}: {path} is not a readable Parquet table ({exc})."
        ) from exc


__all__ = [
    "ArtifactError",
    "EmbeddingsRun",
    "atomic_dir",
    "embeddings_dir",
    "list_runs",
    "load_model",
    "model_dir",
    "read_json",
    "read_model_manifest",
    "save_model_run",
    "sha256_file",
    "validate_run_id",
    "verify_model_file",
    "versions",
    "write_json",
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
