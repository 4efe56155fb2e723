"""The dashboard's look in one place: colours, palettes, the Plotly template and method labels.

Every page, card and figure takes its colours from here, so a cluster or a damage class has the
same colour everywhere. Method names and labels are never spelled here: they come from
:mod:`app.ml.registry` (``REDUCERS`` / ``EXPLAINERS``), so a registered method appears on every
page by itself.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from app.ml import registry

#: Categorical palette (Tableau 10 + 10 lighter companions); "other"/"unknown" are grey.
PALETTE: tuple[str, ...] = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
    "#ff9da7", "#2f4b7c", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a", "#86bcb6", "#d4a6c8",
    "#f1ce63", "#d7b5a6", "#499894", "#bab0ac",
)
GREY = "#b8bec6"
DAMAGE_ORDER = ("no-damage", "minor-damage", "major-damage", "destroyed", "un-classified", "none")
DAMAGE_COLOURS = {
    "no-damage": "#59a14f", "minor-damage": "#edc948", "major-damage": "#f28e2b",
    "destroyed": "#e15759", "un-classified": "#9c755f", "none": "#d5d9de",
}

FONT = "Inter, system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
INK, MUTED, GRID = "#1f2933", "#66727f", "#e9edf1"
NAN_COLOUR = "#c4c9d0"

TEMPLATE = go.layout.Template(
    layout={
        "font": {"family": FONT, "size": 12, "color": INK},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "#ffffff",
        "colorway": ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"],
        "xaxis": {"gridcolor": GRID, "zeroline": False, "linecolor": "#cfd6dd",
                  "ticks": "", "title": {"font": {"size": 12, "color": MUTED}}},
        "yaxis": {"gridcolor": GRID, "zeroline": False, "linecolor": "#cfd6dd",
                  "ticks": "", "title": {"font": {"size": 12, "color": MUTED}}},
        "title": {"font": {"size": 14, "color": INK}, "x": 0.0, "xanchor": "left",
                  "xref": "paper"},
        "hoverlabel": {"font": {"family": FONT}},
        "modebar": {"bgcolor": "rgba(255,255,255,0.85)", "color": "#9aa5b1",
                    "activecolor": "#2f6fde"},
    }
)


def cluster_colour(cluster: int) -> str:
    """The colour of a cluster number, the same on every map, card and plot."""
    return PALETTE[int(cluster) % len(PALETTE)]


def category_colour(key: str, category: str, i: int) -> str:
    """The colour of the ``i``-th category of colouring ``key`` (damage and clusters keep theirs)."""
    if category in ("unknown", "other"):
        return GREY
    if key == "damage":
        return DAMAGE_COLOURS.get(category, PALETTE[i % len(PALETTE)])
    if key == "cluster":
        return cluster_colour(int(category.split()[-1]))
    return PALETTE[i % len(PALETTE)]


def method_label(method: str) -> str:
    """The display name of a map method (``registry.REDUCERS``), the name itself if unknown."""
    spec = registry.REDUCERS.get(method)
    return spec.label if spec is not None else method


def method_options(methods: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """Radio / dropdown options for map methods, labelled from the registry."""
    return [{"label": method_label(m), "value": m} for m in methods]


def explainer_options() -> list[dict[str, Any]]:
    """Dropdown options for every registered explainer."""
    return [{"label": spec.label, "value": name} for name, spec in registry.EXPLAINERS.items()]


__all__ = [
    "DAMAGE_COLOURS", "DAMAGE_ORDER", "FONT", "GREY", "GRID", "INK", "MUTED", "NAN_COLOUR",
    "PALETTE", "TEMPLATE", "category_colour", "cluster_colour", "explainer_options",
    "method_label", "method_options",
]
