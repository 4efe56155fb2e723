"""Shared set-up of the explain / evaluate / segment browser tests: a model for the fixture run.

The fixture embeddings run (``tests/fixture_run.py``) names model run ``fixture-model`` but ships
no model. ``lens_model`` saves a tiny untrained ``build_unet("light")`` under that id in a
temporary model store and points ``config.MODEL_STORE`` at it for the session (the live server
runs in this process, and the pages resolve the store at request time). Its SHA-256 differs from
the fixture manifest's, so the pages show their "model differs" warning, which is expected.
When ``browser_run`` switches to the shipped demo (whose model exists), this is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def lens_model(tmp_path_factory: pytest.TempPathFactory, browser_run: tuple[Path, str]
               ) -> Iterator[Path]:
    import keras

    from app import artifacts, config
    from app.ml import inference
    from app.ml.unet import build_unet

    root, run_id = browser_run
    model_run = artifacts.EmbeddingsRun.open(run_id, root, check_model=False).model_run
    if model_run in artifacts.list_runs(config.MODEL_STORE):
        yield config.MODEL_STORE
        return
    store = tmp_path_factory.mktemp("browser-models")
    keras.utils.set_random_seed(0)
    artifacts.save_model_run(build_unet("light"), model_run, preset="light", input_size=None,
                             dataset={}, split={}, params={}, metrics={}, history=[], store=store)
    mp = pytest.MonkeyPatch()
    mp.setattr(config, "MODEL_STORE", store)
    inference.forget_services()
    try:
        yield store
    finally:
        mp.undo()
        inference.forget_services()


def write_png(path: Path, height: int = 200, width: int = 300, seed: int = 0) -> Path:
    """An aerial-looking test image: noisy ground with a few bright rectangular roofs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((95, 105, 90), 18, (height, width, 3)), 0, 255)
    for _ in range(6):
        h, w = (int(v) for v in rng.integers(12, 40, 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        img[y:y + h, x:x + w] = (205, 195, 180)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path
