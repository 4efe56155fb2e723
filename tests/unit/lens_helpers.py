"""What the tests of the pages share: module-scoped fixtures (a tiny untrained U-Net, a model
service over it, a small fixture run, an app whose model store holds that U-Net) and a way to
call a callback with ``dash.ctx.triggered`` set.

A test module imports the fixtures it uses (``from tests.unit.lens_helpers import
flask_app_fixture  # noqa: F401 - fixture``) and asks for them by name (``flask_app``); pytest
builds them once per module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextvars import copy_context
from typing import Any

import keras
import numpy as np
import pytest
from dash._callback_context import context_value
from dash._utils import AttributeDict

from app import artifacts, config
from app.ml import inference
from app.ml.inference import ModelService, ResultCache
from app.ml.unet import build_unet
from tests.fixture_run import make_fixture_run
from tests.webapp import built_app


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random (h, w, 3) uint8 pixels."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.fixture(scope="module", name="unet")
def unet_fixture() -> keras.Model:
    """The light U-Net, untrained, seeded."""
    keras.utils.set_random_seed(0)
    return build_unet("light")


@pytest.fixture(scope="module", name="svc")
def svc_fixture(unet: keras.Model) -> ModelService:
    return ModelService(model=unet, cache=ResultCache())


@pytest.fixture(scope="module", name="fixture_small")
def fixture_small_fixture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 36-tile fixture run (no model run of its own)."""
    root = tmp_path_factory.mktemp("small-run")
    run_id = make_fixture_run(root, n=36, seed=1, run_id="fixture-small")
    return artifacts.EmbeddingsRun.open(run_id, root, check_model=False)


@pytest.fixture(scope="module", name="flask_app")
def flask_app_fixture(tmp_path_factory: pytest.TempPathFactory, unet: keras.Model) -> Iterator[Any]:
    """An app over a fixture run whose model (fixture-model, the tiny U-Net) exists."""
    store = tmp_path_factory.mktemp("lens-models")
    artifacts.save_model_run(unet, "fixture-model", preset="light", input_size=None, dataset={},
                             split={}, params={}, metrics={}, history=[], store=store)
    root = tmp_path_factory.mktemp("lens-web")
    run_id = make_fixture_run(root, n=60, seed=0)
    mp = pytest.MonkeyPatch()
    mp.setattr(config, "MODEL_STORE", store)
    inference.forget_services()
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                    cache_config={"CACHE_TYPE": "SimpleCache"})
    yield app
    mp.undo()
    inference.forget_services()


def call(func: Any, *args: Any, triggered: tuple = ()) -> Any:
    """Run a callback with ``dash.ctx.triggered`` set to ``(id, prop, value)`` items."""

    def run() -> Any:
        items = []
        for cid, prop, value in triggered:
            key = json.dumps(cid, sort_keys=True, separators=(",", ":")) if isinstance(cid, dict) \
                else cid
            items.append({"prop_id": f"{key}.{prop}", "value": value})
        context_value.set(AttributeDict(triggered_inputs=items))
        return func(*args)

    return copy_context().run(run)


def to_json(component: Any) -> str:
    return json.dumps(component, default=lambda o: o.to_plotly_json())


