"""app.ml.registry: a new map method or explainer is one registration, and every layer uses it.

A dummy reducer (a seeded Gaussian random projection) is fitted by ``pipeline.run_reduce``,
stored, reloaded and used to place a vector by ``ml.apply.place_new``; a dummy explainer is
served by ``ModelService.explain`` on the demo model. Both are unregistered afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.random_projection import GaussianRandomProjection

from app import artifacts, config, pipeline
from app.artifacts import EmbeddingsRun
from app.cli import build_parser
from app.ml import apply, registry
from app.ml.explain import CamResult
from app.ml.inference import ModelService, ResultCache
from app.ml.reduce import FittedReducer, fit_reducer
from tests.fixture_run import make_fixture_run

REDUCER = "randproj"
EXPLAINER = "dummy-prob"


def fit_random_projection(X: np.ndarray, *, n_components: int, random_state: int | None,
                          **params: Any) -> FittedReducer:
    """A map method in a few lines: any fitted object with ``transform`` is stored by pickle."""
    model = GaussianRandomProjection(n_components=n_components,
                                     random_state=random_state).fit(X)
    return FittedReducer(
        method=REDUCER, n_components=n_components, points=model.transform(X), model=model,
        params={"n_features": int(X.shape[1]), "random_state": random_state, **params},
    )


calls: list[dict[str, Any]] = []


def probability_map(model: Any, image: np.ndarray, *, target: str,
                    threshold: float) -> CamResult:
    """An explainer that shows the model's own prediction above ``threshold``."""
    calls.append({"target": target, "threshold": threshold})
    prob = np.asarray(model([image[None]], training=False))[0, ..., 0].astype(np.float32)
    heatmap = (prob >= threshold).astype(np.float32)
    return CamResult(heatmap=heatmap, raw=prob, prob=prob, empty=not heatmap.any(),
                     message="", method=EXPLAINER, layer="image", target=target, seconds=0.0)


@pytest.fixture()
def dummies() -> Iterator[None]:
    registry.register_reducer(registry.ReducerSpec(
        name=REDUCER, label="Random projection",
        description="A seeded Gaussian random projection (a test's dummy).",
        fit=fit_random_projection,
    ))
    registry.register_explainer(registry.ExplainerSpec(
        name=EXPLAINER, label="Prediction", description="The predicted mask (a test's dummy).",
        function=probability_map, uses_layer=False,
    ))
    calls.clear()
    try:
        yield
    finally:
        registry.unregister(REDUCER)
        registry.unregister(EXPLAINER)


def test_a_registered_reducer_is_fitted_stored_reloaded_and_placed(
    dummies: None, tmp_path: Path
) -> None:
    run_id = make_fixture_run(tmp_path, n=40, seed=0, images=False)
    assert REDUCER in build_parser().parse_args(["reduce", run_id, "--methods", REDUCER]).methods
    pipeline.run_reduce(run_id, methods=("pca", REDUCER), also_3d=False, k_values=range(2, 5),
                        embeddings_root=tmp_path, progress=False)

    run = EmbeddingsRun.open(run_id, tmp_path, check_model=False)
    files = run.manifest["reduce"]["files"]
    assert {artifacts.reducer_file(f"{REDUCER}.npz"), artifacts.reducer_file(f"{REDUCER}.pkl"),
            artifacts.reducer_file("pca.npz")} <= set(files)
    assert {f"{REDUCER}_x", f"{REDUCER}_y"} <= set(run.tiles.columns)
    assert f"{REDUCER}_z" not in run.tiles.columns  # no map_3d: 2-D only
    i = 7
    placed = apply.place_new(run, np.asarray(run.vectors[i], dtype=np.float32))
    assert set(placed) == {"pca", REDUCER}
    np.testing.assert_allclose(placed[REDUCER],
                               run.tiles.loc[i, [f"{REDUCER}_x", f"{REDUCER}_y"]].astype(float),
                               rtol=1e-4, atol=1e-4)
    assert run.memoized("reducers")


def test_a_registered_explainer_is_served(dummies: None) -> None:
    if config.DEMO_MODEL_RUN not in artifacts.list_runs(config.MODEL_STORE):
        pytest.skip("the shipped demo model is not in model_store/")
    service = ModelService(config.DEMO_MODEL_RUN, cache=ResultCache())
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3)).astype(np.uint8)
    out = service.explain(image, EXPLAINER, layer="bottleneck", target="predicted",
                          box=(1, 2, 3, 4), threshold=0.3)
    res = out.result
    assert not out.cached and res.method == EXPLAINER
    assert res.heatmap.shape == (70, 90) and res.prob.shape == (70, 90)  # cropped back
    assert res.layer == "image" and res.target == "predicted"
    assert calls == [{"target": "predicted", "threshold": 0.3}]  # only what it declares
    again = service.explain(image, EXPLAINER, layer="enc1", target="predicted", threshold=0.3)
    assert again.cached and len(calls) == 1  # no layer: the layer does not key the cache


def test_unknown_names_list_the_registered_ones(dummies: None) -> None:
    with pytest.raises(ValueError, match=rf"one of \['pca', 'tsne', 'umap', '{REDUCER}'\]"):
        fit_reducer("lda", np.ones((10, 2)))
    with pytest.raises(ValueError, match="distinct methods of .*randproj"):
        pipeline.run_reduce("any-run", methods=("lda",))
    service = ModelService(model=object(), cache=ResultCache())  # never loaded: fails first
    with pytest.raises(ValueError, match=rf"one of \['seg-grad-cam', .*'{EXPLAINER}'\]"):
        service.explain(np.zeros((16, 16, 3), np.uint8), "lime")


def test_unregister_removes_them(dummies: None) -> None:
    registry.unregister(REDUCER)
    registry.unregister(EXPLAINER)
    assert REDUCER not in registry.reducer_names() and EXPLAINER not in registry.explainer_names()
    with pytest.raises(ValueError, match="'method' parameter must be one of"):
        registry.reducer(REDUCER)
