"""The methods the tool offers, each named once: map reductions and explainers.

Every place that lists, labels, validates or dispatches a method (the CLI, the pipeline, the
JSON API, the health check and the pages) reads these registries, so a new reduction method or
explainer is one entry here plus its function. Implementations are named by dotted path and
imported on first call, so reading the registry (labels for a page) never imports TensorFlow,
openTSNE or umap-learn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EXPLAINERS",
    "REDUCERS",
    "ExplainerSpec",
    "ReducerSpec",
    "explainer",
    "explainer_names",
    "reducer",
    "reducer_names",
    "register_explainer",
    "register_reducer",
    "unregister",
]


def _resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable, or the one a ``"package.module:function"`` path names (imported now)."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ReducerSpec:
    """A map method: fit on the embedding vectors, place new vectors, store and reload.

    ``fit`` is called as ``fit(X, n_components=..., random_state=..., **params)`` and returns an
    ``app.ml.reduce.FittedReducer``. ``pipeline_params`` are what ``reduce`` passes by default.

    How a fitted map places new vectors and is stored: ``transform`` is called as
    ``transform(reducer, X)`` (default: ``reducer.model.transform(X)``, any scikit-learn-like
    object); ``pickled`` stores ``reducer.model`` as ``<name>.pkl`` next to ``<name>.npz``
    (False: the model is a dict of arrays kept in the npz, nothing unpickled). ``libraries``
    must keep their major.minor version for a pickle to be trusted. ``map_3d`` is how the
    pipeline gets a third axis: "nested" (fit 3 components, the 2-D map is the first two),
    "refit" (a second 3-component fit whose third axis is kept, not its reducer) or None.
    """

    name: str
    label: str
    description: str
    fit: str | Callable[..., Any]
    min_samples: int = 2
    pipeline_params: dict[str, Any] = field(default_factory=dict)
    libraries: tuple[str, ...] = ("numpy", "scikit-learn")
    transform: str | Callable[..., Any] | None = None
    pickled: bool = True
    map_3d: str | None = None

    def fit_function(self) -> Callable[..., Any]:
        return _resolve(self.fit)

    def transform_function(self) -> Callable[..., Any] | None:
        return None if self.transform is None else _resolve(self.transform)


@dataclass(frozen=True)
class ExplainerSpec:
    """A heat-map method over one image.

    ``function`` is called as ``function(model, image, layer=..., target=..., box=..., pixel=...,
    threshold=..., channel=...)`` (only the keywords it declares are passed) and returns an
    ``app.ml.explain.CamResult``. ``uses_layer`` is False for input-space methods (saliency);
    ``uses_target`` is False for methods that ignore the target (activations);
    ``uses_channel`` is True when the user picks one channel.
    """

    name: str
    label: str
    description: str
    function: str | Callable[..., Any]
    uses_layer: bool = True
    uses_target: bool = True
    uses_channel: bool = False

    def callable(self) -> Callable[..., Any]:
        return _resolve(self.function)


REDUCERS: dict[str, ReducerSpec] = {}
EXPLAINERS: dict[str, ExplainerSpec] = {}


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("+", "").isalnum():
        raise ValueError(
            "The 'name' parameter must be a non-empty string of letters, digits, '-' or '+'. "
            f"Got {name!r} instead."
        )
    return name


def register_reducer(spec: ReducerSpec) -> ReducerSpec:
    """Add (or replace) a map method; every page, the CLI and the API offer it from now on."""
    REDUCERS[_check_name(spec.name)] = spec
    return spec


def register_explainer(spec: ExplainerSpec) -> ExplainerSpec:
    """Add (or replace) an explainer; Explain, the API and the CLI offer it from now on."""
    EXPLAINERS[_check_name(spec.name)] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method from both registries (tests register and remove dummies)."""
    REDUCERS.pop(name, None)
    EXPLAINERS.pop(name, None)


def reducer_names() -> tuple[str, ...]:
    return tuple(REDUCERS)


def explainer_names() -> tuple[str, ...]:
    return tuple(EXPLAINERS)


def _lookup(registry: dict[str, Any], kind: str, name: Any) -> Any:
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"The '{kind}' parameter must be one of {list(registry)}. Got {name!r} instead."
        ) from None


def reducer(name: Any) -> ReducerSpec:
    """The spec of map method ``name``, or a ValueError that lists the known ones."""
    return _lookup(REDUCERS, "method", name)


def explainer(name: Any) -> ExplainerSpec:
    """The spec of explainer ``name``, or a ValueError that lists the known ones."""
    return _lookup(EXPLAINERS, "method", name)


# --------------------------------------------------------------------------- built-in methods

register_reducer(ReducerSpec(
    name="pca", label="PCA",
    description="Principal components: a linear projection that keeps the most variance; "
                "exact, fast, and the axes carry their explained-variance share.",
    fit="app.ml.reduce:fit_pca", min_samples=2,
    transform="app.ml.reduce:pca_transform", pickled=False, map_3d="nested",
))
register_reducer(ReducerSpec(
    name="tsne", label="t-SNE",
    description="openTSNE: keeps each tile's nearest neighbours together; distances between "
                "far-apart groups mean little.",
    fit="app.ml.reduce:fit_tsne", min_samples=10,
    libraries=("openTSNE", "numpy", "scipy", "scikit-learn"),
    transform="app.ml.reduce:tsne_transform",
))
register_reducer(ReducerSpec(
    name="umap", label="UMAP",
    description="umap-learn: neighbourhoods like t-SNE, with more of the global layout kept.",
    fit="app.ml.reduce:fit_umap", min_samples=10,
    libraries=("umap-learn", "pynndescent", "numba", "numpy", "scipy", "scikit-learn"),
    map_3d="refit",
))

register_explainer(ExplainerSpec(
    name="seg-grad-cam", label="Seg-Grad-CAM",
    description="Channels of the layer weighted by the mean gradient of the target's building "
                "logits (Vinogradova et al., 2020): where the layer's features push the "
                "target towards “building”.",
    function="app.ml.explain:seg_grad_cam",
))
register_explainer(ExplainerSpec(
    name="grad-cam++", label="Grad-CAM++",
    description="Grad-CAM++ (Chattopadhay et al., 2018) weights each channel by its positive "
                "gradients only, so several separate buildings can all light up.",
    function="app.ml.explain:grad_cam_pp",
))
register_explainer(ExplainerSpec(
    name="activation", label="Activations (mean)",
    description="The mean of the layer's channels: what the layer responds to, whatever the "
                "target.",
    function="app.ml.explain:activation_map", uses_target=False,
))
register_explainer(ExplainerSpec(
    name="activation-channel", label="Activation (one channel)",
    description="One channel of the layer, min–max normalised on this image.",
    function="app.ml.explain:activation_map", uses_target=False, uses_channel=True,
))
register_explainer(ExplainerSpec(
    name="saliency", label="Saliency",
    description="The absolute gradient of the target's logits with respect to the input pixels: "
                "which pixels change the answer most.",
    function="app.ml.explain:saliency", uses_layer=False,
))
register_explainer(ExplainerSpec(
    name="guided-grad-cam", label="Guided Grad-CAM",
    description="Guided backpropagation × Seg-Grad-CAM (Selvaraju et al., 2017): sharp "
                "pixel-level detail inside the CAM's regions; the colour image shows the "
                "signed guided gradients.",
    function="app.ml.explain:guided_grad_cam",
))
