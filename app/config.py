"""Paths and defaults. Every value can be overridden by an environment variable (``UNET_LENS_*``)
and most by a CLI flag."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _path(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser().resolve() if value else default


MODEL_STORE = _path("UNET_LENS_MODEL_STORE", REPO_ROOT / "model_store")
EMBEDDINGS_DIR = _path("UNET_LENS_EMBEDDINGS", REPO_ROOT / "embeddings")
DATASETS_DIR = _path("UNET_LENS_DATASETS", REPO_ROOT / "datasets")
CACHE_DIR = _path("UNET_LENS_CACHE_DIR", REPO_ROOT / ".cache" / "flask")
ASSETS_DIR = REPO_ROOT / "assets"

#: Shared real imagery (never committed); tests skip when absent.
SHARED_DATA = _path("UNET_LENS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")

#: The shipped demo: model and embeddings runs committed to the repository.
DEMO_MODEL_RUN = "demo-light"
DEMO_EMBEDDINGS_RUN = "demo-light-bottleneck"

HOST = os.environ.get("UNET_LENS_HOST", "127.0.0.1")
PORT = int(os.environ.get("UNET_LENS_PORT", "8050"))

#: Upload limits: bytes on the wire and decoded pixels (decompression-bomb guard).
MAX_UPLOAD_BYTES = int(os.environ.get("UNET_LENS_MAX_UPLOAD_BYTES", str(20 * 1024 * 1024)))
MAX_IMAGE_PIXELS = int(os.environ.get("UNET_LENS_MAX_IMAGE_PIXELS", str(8192 * 8192)))
#: Load the model and trace its graphs in the background when the server starts.
WARM_UP = os.environ.get("UNET_LENS_WARM_UP", "1").strip().lower() not in ("0", "false", "no", "")
#: Images up to this many (padded) pixels are segmented in one whole-image pass: no seams at
#: all, and at 1024² about half the work of 25 overlapping 256² tiles. Larger ones are tiled,
#: which bounds the activation memory per request (light preset at 1024²: 383 MiB peak RSS growth in one pass, 90 MiB in tiles).
SINGLE_PASS_MAX_PIXELS = int(os.environ.get("UNET_LENS_SINGLE_PASS_MAX_PIXELS",
                                            str(1024 * 1024)))
#: Signs background-callback job handles. Unset: one is generated per deployment and kept beside
#: the cache (or in Redis), shared by every worker; set it when several machines serve together.
SECRET_KEY = os.environ.get("UNET_LENS_SECRET_KEY") or None
#: Inference budget per request (pixels): an upload with more pixels than this (but within
#: MAX_IMAGE_PIXELS) is downscaled to fit before it is segmented, and the result says so. 2048²
#: (4.2 MP) is about 5 s of CPU inference on 2 cores, against ~85 s for a legal 8000² upload.
MAX_INFER_PIXELS = int(os.environ.get("UNET_LENS_MAX_INFER_PIXELS", str(2048 * 2048)))
#: Model requests (decode + inference of an upload) run at once per worker process, requests
#: allowed to wait for one, and how long they wait before a 429 / "busy" message. The rest of a
#: worker's threads stay free for /healthz, pages and images.
INFER_SLOTS = int(os.environ.get("UNET_LENS_INFER_SLOTS", "1"))
INFER_QUEUE = int(os.environ.get("UNET_LENS_INFER_QUEUE", "1"))
INFER_WAIT_S = float(os.environ.get("UNET_LENS_INFER_WAIT_S", "10"))
