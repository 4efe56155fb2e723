"""Small HTML building blocks of the explain, evaluate and segment pages (pure functions).

Stored tiles are ``<img src="/img/...">`` (``components.img``); computed images arrive as data
URIs from :mod:`app.web.services`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from dash import dcc, html

from app.web import components


def message(text: Any, kind: str = "error", cid: str | None = None) -> html.Div:
    """An inline message box: "error" (red), "warn" (amber), "ok" (green) or "info" (blue)."""
    kwargs: dict[str, Any] = {"id": cid} if cid else {}
    if kind == "error":
        kwargs["role"] = "alert"
    return html.Div(text, className=f"lens-msg lens-msg-{kind}", **kwargs)


def stat(label: str, value: str, cls: str = "") -> html.Div:
    return html.Div([html.Span(label, className="stat-label"),
                     html.Span(value, className=f"stat-value {cls}".strip())], className="stat")


def panel(title: Any, child: Any, hint: Any = "", cls: str = "", cid: str | None = None,
          head_extra: Any = None) -> html.Div:
    """A white panel with a title row."""
    head: list[Any] = [html.Span(title, className="panel-title")]
    if head_extra is not None:
        head.append(head_extra)
    if hint:
        head.append(html.Span(hint, className="panel-hint"))
    kwargs = {"id": cid} if cid else {}
    return html.Div([html.Div(head, className="panel-head"), child],
                    className=f"panel {cls}".strip(), **kwargs)


def control(label: str, child: Any, cls: str = "", cid: str | None = None) -> html.Div:
    kwargs = {"id": cid} if cid else {}
    return html.Div([html.Label(label, className="control-label"), child],
                    className=f"control {cls}".strip(), **kwargs)


def figure(src: str, caption: Any, *, note: Any = None, cid: str | None = None,
           cls: str = "", alt: str | None = None) -> html.Figure:
    """An image with a caption under it."""
    kwargs = {"id": cid} if cid else {}
    cap: list[Any] = [caption]
    if note:
        cap.append(html.Span(note, className="fig-note"))
    return html.Figure([html.Img(src=src, alt=alt or str(caption), className="lens-img",
                                 draggable="false", **kwargs),
                        html.Figcaption(cap)], className=f"lens-fig {cls}".strip())


def placeholder(caption: str, text: str = "") -> html.Figure:
    """A grey square standing in for an image that is not there (yet)."""
    return html.Figure([html.Div(text, className="lens-img lens-placeholder"),
                        html.Figcaption(caption)], className="lens-fig")


def stack(base_src: str, top_src: str, *, opacity: float = 0.6, top_id: str | None = None,
          alt: str = "heat map over the image") -> html.Div:
    """Two images stacked (the top one's CSS opacity is the overlay slider)."""
    kwargs = {"id": top_id} if top_id else {}
    return html.Div([
        html.Img(src=base_src, className="lens-img", alt="image", draggable="false"),
        html.Img(src=top_src, className="lens-img stack-top", alt=alt, draggable="false",
                 style={"opacity": opacity}, **kwargs),
    ], className="stack")


def progress_box(pid: str, label_id: str, box_id: str) -> html.Div:
    """A progress bar with a label, hidden until a background callback runs."""
    return html.Div([
        html.Progress(id=pid, value="0", max="1", className="progress"),
        html.Span("Working…", id=label_id, className="progress-label"),
    ], id=box_id, className="progress-box", style={"display": "none"})


def tile_card(run_id: str, version: str, tile_id: str, note: str, *, href: str | None = None,
              cid: Any = None, kind: str = "thumb") -> Any:
    """A tile thumbnail card: a link (``href``) or a button (``cid``, pattern-matching id)."""
    children = [
        components.img(run_id, kind, tile_id, version, f"tile {tile_id}", "card-img"),
        html.Div(tile_id, className="card-id", title=tile_id),
        html.Div(note, className="card-note card-foot"),
    ]
    if href is not None:
        return dcc.Link(children, href=href, className="tile-card lens-card", title=tile_id)
    return html.Button(children, id=cid, n_clicks=0, className="tile-card lens-card",
                       title=tile_id)


def explain_href(run_id: str, tile_id: str) -> str:
    return "/explain?" + urlencode({"tile": tile_id, "run": run_id})


def colour_key(items: list[tuple[str, str]]) -> html.Div:
    """A row of colour swatches with labels."""
    return html.Div([html.Span([html.I(style={"background": colour}), label],
                               className="damage-key") for colour, label in items],
                    className="lens-key")


__all__ = [
    "colour_key", "control", "explain_href", "figure", "message", "panel", "placeholder",
    "progress_box", "stack", "stat", "tile_card",
]
