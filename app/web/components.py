"""Every reusable HTML block of the pages: messages, panels, controls, stats, tile cards, image
figures, tooltip, gallery, detail panel, cluster cards, tables.

Pure functions of plain data (records from ``app.web.logic``), so they unit-test without a
server. Stored tiles are ``<img src="/img/...">`` URLs; computed images arrive as data URIs from
:mod:`app.web.images`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from dash import dcc, html, no_update

from app import config
from app.artifacts import ArtifactError, EmbeddingsRun
from app.data.imageio import PIL_FORMATS
from app.ml.metrics import ERROR_COLOURS
from app.web import health, ids, runs
from app.web.images import img_url
from app.web.logic.tiles import available_methods, tile_record
from app.web.theme import DAMAGE_COLOURS, DAMAGE_ORDER, cluster_colour


def fmt(value: Any, digits: int = 3) -> str:
    """A number for display ("–" when missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage ("–" when missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * 100:.{digits}f} %"


def empty_state(title: str, body: str | Sequence[Any] = "", cid: str | None = None) -> html.Div:
    """A friendly placeholder box."""
    kwargs = {"id": cid} if cid else {}
    return html.Div([html.Div(title, className="empty-title"), html.Div(body, className="empty-body")],
                    className="empty-state", **kwargs)


#: The style that hides a page's content while its empty state explains why.
HIDDEN: dict[str, str] = {"display": "none"}


def run_gate(run: EmbeddingsRun | None, what: str, *, info: runs.ModelInfo | None = None,
             maps: bool = False, need_run: bool = True) -> html.Div | None:
    """The empty state a page shows instead of its content, or None when it can show it.

    Every page asks the same questions of the picked run, in this order: is there an embeddings
    run (``need_run``), does it have maps (``maps``), is there a model (``info``)? ``what`` is
    the page's verb ("show", "explain", ...).
    """
    if run is None and need_run:
        return empty_state(
            f"No embeddings run to {what}",
            ["Build the demo with ", html.Code("python -m app demo"), ", or embed and reduce a "
             "model run (", html.Code("python -m app embed …"), " then ",
             html.Code("python -m app reduce <run>"), ")."])
    if run is not None and maps and not available_methods(run.tiles):
        return empty_state(
            f"Run {run.run_id} has no maps yet",
            ["Compute them with ", html.Code(f"python -m app reduce {run.run_id}"), "."])
    if info is not None and not info.ok:
        return empty_state(f"No model to {what} with", info.message)
    return None


def vectors_problem(run: EmbeddingsRun) -> str | None:
    """Why the run's stored vectors cannot be read (missing or damaged ``vectors.npy``), or None.

    The maps need only ``tiles.parquet``; neighbours and re-clustering need the vectors, so a
    page says what is missing instead of failing (and spinning) on it.
    """
    try:
        run.vectors  # noqa: B018 - memory-mapped once per run
    except (ArtifactError, OSError) as exc:
        return health.tidy(str(exc))
    return None


def img(run_id: str, kind: str, tile_id: str, version: str, alt: str, cls: str = "") -> html.Img:
    """An image of a tile served by the id route."""
    return html.Img(src=img_url(run_id, kind, tile_id, version), alt=alt, className=cls,
                    draggable="false")


def stat(label: str, value: str, cls: str = "") -> html.Div:
    """A label over a value (metrics in cards, summaries and tooltips)."""
    return html.Div([html.Span(label, className="stat-label"),
                     html.Span(value, className=f"stat-value {cls}".strip())], className="stat")


def damage_bar(damage: dict[str, int], show_legend: bool = False) -> html.Div:
    """A thin stacked bar of damage classes (counts of buildings), with hover titles."""
    total = sum(damage.values())
    if total <= 0:
        return html.Div("no damage labels", className="damage-none")
    order = [d for d in DAMAGE_ORDER if d in damage] + [d for d in damage if d not in DAMAGE_ORDER]
    segments = [
        html.Span(className="damage-seg", title=f"{name}: {damage[name]:,} ({damage[name] / total:.0%})",
                  style={"width": f"{damage[name] / total * 100:.2f}%",
                         "background": DAMAGE_COLOURS.get(name, "#999")})
        for name in order if damage[name] > 0
    ]
    children: list[Any] = [html.Div(segments, className="damage-bar", role="img",
                                    **{"aria-label": "damage class mix"})]
    if show_legend:
        children.append(html.Div([
            html.Span([html.I(style={"background": DAMAGE_COLOURS.get(name, "#999")}),
                       f"{name} {damage[name]:,}"], className="damage-key")
            for name in order if damage[name] > 0
        ], className="damage-legend"))
    return html.Div(children, className="damage")


def tooltip(run_id: str, version: str, rec: dict[str, Any]) -> html.Div:
    """Hover card: thumbnail + overlay, id, context and the tile's metrics."""
    tid = rec["tile_id"]
    meta = " · ".join(str(rec[k]) for k in ("phase", "disaster", "split") if rec.get(k))
    stats = [
        stat("IoU", fmt(rec.get("iou"))),
        stat("Precision", fmt(rec.get("precision"))),
        stat("Recall", fmt(rec.get("recall"))),
        stat("True bldg", pct(rec.get("true_fraction"))),
        stat("Pred bldg", pct(rec.get("pred_fraction"))),
    ]
    if rec.get("cluster") is not None:
        stats.append(stat("Cluster", str(rec["cluster"])))
    if rec.get("ood_score") is not None:
        stats.append(stat("OOD score", f"{rec['ood_score']:.0f}", cls="tip-ood"))
    children: list[Any] = [
        html.Div([
            html.Figure([img(run_id, "thumb", tid, version, f"tile {tid}", "tip-img"),
                         html.Figcaption("tile")]),
            html.Figure([img(run_id, "overlay", tid, version, f"overlay {tid}", "tip-img"),
                         html.Figcaption("overlay")]),
        ], className="tip-images"),
        html.Div(tid, className="tip-id"),
        html.Div(meta, className="tip-meta") if meta else None,
        html.Div(stats, className="stats tip-stats"),
    ]
    if any(rec.get("damage", {}).values()):
        children.append(html.Div("Buildings by damage class", className="stat-label tip-dmg"))
        children.append(damage_bar(rec["damage"], show_legend=True))
    return html.Div([c for c in children if c is not None], className="tip")


def tile_card(run_id: str, version: str, tile_id: str, foot: Any, *, href: str | None = None,
              cid: Any = None, kind: str = "thumb", overlay: bool = False, cls: str = "",
              title: str | None = None) -> html.Button | dcc.Link:
    """The tile card of every gallery: thumbnail (and its error overlay), id and a footer.

    A link when ``href`` is given, else a button with id ``cid`` (pattern-matching ids).
    """
    images = [img(run_id, kind, tile_id, version, f"tile {tile_id}", "card-img")]
    if overlay:
        images.append(img(run_id, "overlay", tile_id, version, f"overlay {tile_id}", "card-img"))
    children = [html.Div(images, className="card-images"),
                html.Div(tile_id, className="card-id", title=tile_id),
                html.Div(foot, className="card-foot")]
    classes = f"tile-card {cls}".strip()
    if href is not None:
        return dcc.Link(children, href=href, className=classes, title=title or tile_id)
    return html.Button(children, id=cid, n_clicks=0, className=classes, title=title or tile_id)


def record_card(
    run_id: str, version: str, rec: dict[str, Any], context: str, *, note: str = "",
    overlay: bool = True, active: bool = False,
) -> html.Button:
    """A tile card with the tile's IoU that inspects it on the explore page (pattern-matching id
    ``{"type": TILE_CARD, "index": "ctx|id"}``)."""
    tid = rec["tile_id"]
    foot = [html.Span(f"IoU {fmt(rec.get('iou'), 2)}", className="card-metric")]
    if note:
        foot.append(html.Span(note, className="card-note"))
    return tile_card(run_id, version, tid, foot, overlay=overlay,
                     cid={"type": ids.TILE_CARD, "index": f"{context}|{tid}"},
                     cls="active" if active else "", title=f"Inspect {tid}")


def record_link_card(run_id: str, version: str, rec: dict[str, Any]) -> dcc.Link:
    """A tile card with the tile's IoU and building share that opens it on the explore page."""
    tid = rec["tile_id"]
    foot = [html.Span(f"IoU {fmt(rec.get('iou'), 2)}", className="card-metric"),
            html.Span(pct(rec.get("true_fraction"), 0) + " bldg", className="card-note")]
    return tile_card(run_id, version, tid, foot, overlay=True,
                     href="/?" + urlencode({"tile": tid, "run": run_id}),
                     title=f"Open {tid} on the explore page")


def gallery_block(prefix: str, title: str = "") -> html.Section:
    """An empty paginated gallery: header (title, pager) and grid, filled by callbacks."""
    g = ids.gallery_ids(prefix)
    return html.Section([
        html.Div([
            html.Div(title, id=g["title"], className="gallery-title"),
            html.Div([
                html.Button("‹ Prev", id=g["prev"], n_clicks=0, className="btn btn-ghost",
                            disabled=True),
                html.Span("", id=g["label"], className="page-label"),
                html.Button("Next ›", id=g["next"], n_clicks=0, className="btn btn-ghost",
                            disabled=True),
            ], className="pager"),
        ], className="gallery-head"),
        html.Div(id=g["grid"], className="card-grid"),
        dcc.Store(id=g["page"], data=0),
    ], className="panel gallery", id=f"{prefix}-section")


def pager_state(page: int, n_pages: int, n_items: int, per_page: int) -> tuple[str, bool, bool]:
    """(label, prev disabled, next disabled) of a gallery pager."""
    if n_items == 0:
        return "", True, True
    first, last = page * per_page + 1, min(n_items, (page + 1) * per_page)
    return f"{first:,}–{last:,} of {n_items:,} · page {page + 1} / {n_pages}", page <= 0, page >= n_pages - 1


def detail_panel(
    run_id: str, version: str, rec: dict[str, Any], neighbours: list[tuple[dict[str, Any], float]],
    *, metric: str, dims: int, has_image: bool = True, has_true: bool = True,
) -> html.Div:
    """The clicked tile: large image, masks, metrics and its nearest neighbours (clickable)."""
    tid = rec["tile_id"]
    meta = [html.Span(str(rec[k]), className="chip") for k in ("phase", "disaster", "split", "scene_id")
            if rec.get(k)]
    big_kind = "image" if has_image else "thumb"

    def fig(kind: str, label: str, cls: str = "mask-img") -> html.Figure:
        return html.Figure([img(run_id, kind, tid, version, f"{label} {tid}", cls),
                            html.Figcaption(label, className="img-badge")])

    images = [
        html.Figure([img(run_id, big_kind, tid, version, f"tile {tid}", "detail-img"),
                     html.Figcaption("tile", className="img-badge")], className="detail-main"),
        fig("true", "true mask") if has_true else None,
        fig("pred", "predicted"),
        fig("overlay", "errors"),
    ]
    stats = [
        stat("IoU", fmt(rec.get("iou"))), stat("F1", fmt(rec.get("f1"))),
        stat("Precision", fmt(rec.get("precision"))), stat("Recall", fmt(rec.get("recall"))),
        stat("True bldg", pct(rec.get("true_fraction"))),
        stat("Pred bldg", pct(rec.get("pred_fraction"))),
        stat("Buildings", fmt(rec.get("building_count"))),
        stat("Cluster", fmt(rec.get("cluster"))),
        stat("Silhouette", fmt(rec.get("silhouette"), 2)),
    ]
    if rec.get("ood_score") is not None:
        stats.append(stat("OOD score", f"{rec['ood_score']:.0f} / 100"))
    score_name = "cos" if metric == "cosine" else "dist"
    cards = [
        record_card(run_id, version, nrec, "nb", note=f"{score_name} {score:.3f}", overlay=False)
        for nrec, score in neighbours
    ]
    space = f"{dims}-d embedding" if dims else "embedding"
    return html.Div([
        html.Div([
            html.Div([html.H3(tid, className="detail-id"), html.Div(meta, className="chips")]),
            dcc.Link("Explain this tile →", href="/explain?" + urlencode({"tile": tid, "run": run_id}),
                     className="btn btn-primary", id="explain-link"),
        ], className="detail-head"),
        html.Div([i for i in images if i is not None], className="detail-images"),
        overlay_legend(),
        html.Div(stats, className="stats detail-stats"),
        html.Div([html.Span("Buildings by damage class", className="stat-label"),
                  damage_bar(rec["damage"], show_legend=True)], className="detail-damage")
        if any(rec.get("damage", {}).values()) else None,
        html.Div([
            html.Span("Nearest neighbours", className="subhead"),
            html.Span(f"{metric} in the original {space} space, not the 2-D map",
                      className="subhead-note"),
        ], className="subhead-row"),
        html.Div(cards, className="card-grid neighbours", id="explore-neighbours"),
    ], className="detail")


def overlay_legend() -> html.Div:
    """Key of the error overlay's colours (true positive / false positive / false negative)."""
    names = {"tp": "correct building (TP)", "fp": "false alarm (FP)", "fn": "missed (FN)"}
    return html.Div([html.Span("errors:", className="legend-title")] + [
        html.Span([html.I(style={"background": "rgb({},{},{})".format(*ERROR_COLOURS[key])}),
                   names[key]], className="damage-key")
        for key in ("tp", "fp", "fn") if key in ERROR_COLOURS
    ], className="damage-legend overlay-legend")


def cluster_card(
    summary: dict[str, Any], run_id: str, version: str, *, selected: bool = False,
) -> html.Button:
    """One cluster: size, mean metrics, damage mix and the tiles nearest its centroid."""
    c = summary["cluster"]
    means = summary["means"]
    colour = cluster_colour(c)
    thumbs = [img(run_id, "thumb", tid, version, f"tile {tid}", "cluster-thumb")
              for tid in summary["nearest"]]
    return html.Button([
        html.Div([
            html.Span(className="swatch", style={"background": colour}),
            html.Span(f"Cluster {c}", className="cluster-name"),
            html.Span(f"{summary['size']:,} tiles · {summary['share']:.0%}", className="cluster-size"),
        ], className="cluster-head"),
        html.Div([
            stat("True bldg", pct(means.get("true_fraction"))),
            stat("Pred bldg", pct(means.get("pred_fraction"))),
            stat("IoU", fmt(means.get("iou"), 2)),
            stat("Precision", fmt(means.get("precision"), 2)),
            stat("Recall", fmt(means.get("recall"), 2)),
            stat("F1", fmt(means.get("f1"), 2)),
        ], className="stats cluster-stats", title="means over the cluster's tiles"),
        html.Div([html.Span("Buildings by damage class", className="stat-label"),
                  damage_bar(summary.get("damage", {}))], className="cluster-damage"),
        html.Div(thumbs, className="cluster-thumbs", title="tiles nearest the centroid"),
    ], id={"type": ids.CLUSTER_CARD, "index": c}, n_clicks=0,
        className="cluster-card" + (" selected" if selected else ""),
        style={"--accent": colour}, title=f"Show the tiles of cluster {c}")


AGREEMENT_HEADERS = {
    "k": "k", "silhouette": "silhouette", "precision": "precision", "recall": "recall",
    "f1": "F1", "accuracy": "accuracy", "purity": "purity", "ari": "ARI", "nmi": "NMI",
}
#: Columns left out of the table (shown elsewhere, or the table's own selector).
AGREEMENT_HIDDEN = ("label", "inertia")


def agreement_table(rows: list[dict[str, Any]], current_k: int | None = None) -> html.Div:
    """The per-k table: silhouette and precision / recall (etc.) of clusters vs a label."""
    if not rows:
        return empty_state("No cluster-vs-label table",
                           "This run stores no sweep labels or no truth masks to compare with.")
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys and key not in AGREEMENT_HIDDEN:
                keys.append(key)
    columns = [k for k in AGREEMENT_HEADERS if k in keys] + [
        k for k in keys if k not in AGREEMENT_HEADERS
    ]
    head = html.Thead(html.Tr([html.Th(AGREEMENT_HEADERS.get(c, c.replace("_", " ")))
                               for c in columns]))
    body = []
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if isinstance(value, float):
                text = fmt(value)
            elif isinstance(value, (dict, list)):
                text = "…"
            else:
                text = "–" if value is None else str(value)
            cells.append(html.Td(text, className="num" if isinstance(value, (int, float)) else ""))
        is_current = current_k is not None and str(row.get("k")) == str(current_k)
        body.append(html.Tr(cells, className="current" if is_current else ""))
    return html.Div(html.Table([head, html.Tbody(body)], className="table"), className="table-wrap")


def event_tile_id(event: Any) -> str | None:
    """The tile id (``customdata``) of the first point of a Plotly hover/click event."""
    try:
        value = event["points"][0]["customdata"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def hover_tooltip(hover_data: Any, run_id: str | None) -> tuple[bool, Any, Any]:
    """(show, bbox, children) of a map's ``dcc.Tooltip`` for a hover event: a dictionary
    lookup by id and a few HTML elements, no figure rebuild and no model call."""
    tid = event_tile_id(hover_data)
    run = runs.get_run(run_id)
    if tid is None or run is None or tid not in run.index:
        return False, no_update, no_update
    bbox = hover_data["points"][0].get("bbox")
    if not isinstance(bbox, dict):
        return False, no_update, no_update
    rec = tile_record(run.tiles, run.index[tid])
    return True, bbox, tooltip(run.run_id, runs.run_version(run), rec)


# --------------------------------------------------------------------------- lens pages


def message(text: Any, kind: str = "error", cid: str | None = None) -> html.Div:
    """An inline message box: "error" (red), "warn" (amber), "ok" (green) or "info" (blue)."""
    kwargs: dict[str, Any] = {"id": cid} if cid else {}
    if kind == "error":
        kwargs["role"] = "alert"
    return html.Div(text, className=f"lens-msg lens-msg-{kind}", **kwargs)


def ood_block(verdict: dict[str, Any] | None) -> list[Any]:
    """Above a result: the out-of-distribution warning (naming the nearest training tiles) when
    the image is unlike the training tiles, then what the model was trained on and the score.
    ``verdict`` is ``app.web.logic.ood.check_image``'s."""
    if not verdict:
        return []
    out: list[Any] = []
    if verdict.get("ood"):
        out.append(html.Div(verdict["message"], className="lens-msg lens-msg-warn ood-warning",
                            id=ids.OOD_WARNING, role="alert"))
    line = [html.Span(verdict.get("trained_on", ""), className="ood-trained-on")]
    if verdict.get("available"):
        line.append(html.Span(f" · out-of-distribution score {verdict['score']:.1f} / 100 "
                              f"(warns above {verdict['percentile']:g})", className="ood-score"))
    elif verdict.get("message"):
        line.append(html.Span(f" · {verdict['message']}", className="ood-score"))
    out.append(html.Div(line, className="panel-foot ood-line", id=ids.OOD_LINE))
    return out


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


def explain_href(run_id: str, tile_id: str) -> str:
    return "/explain?" + urlencode({"tile": tile_id, "run": run_id})


def colour_key(items: list[tuple[str, str]]) -> html.Div:
    """A row of colour swatches with labels."""
    return html.Div([html.Span([html.I(style={"background": colour}), label],
                               className="damage-key") for colour, label in items],
                    className="lens-key")


# --------------------------------------------------------------------------- uploads

#: How each accepted decoder format is named to a user.
_FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "TIFF": "TIFF", "BMP": "BMP", "WEBP": "WebP"}


def upload_formats() -> tuple[list[str], list[str]]:
    """(file extensions, MIME types) of every format the decoder (and so the API) accepts, from
    ``imageio.PIL_FORMATS`` and Pillow's own registries: the upload boxes never drift from it."""
    from PIL import Image

    Image.init()
    exts = sorted(ext for ext, fmt_ in Image.registered_extensions().items() if fmt_ in PIL_FORMATS)
    mimes = sorted({Image.MIME[f] for f in PIL_FORMATS if f in Image.MIME})
    return exts, mimes


def upload_formats_text() -> str:
    """"PNG, JPEG, TIFF, BMP or WebP": the accepted formats in words."""
    names = [_FORMAT_NAMES.get(f, f) for f in PIL_FORMATS]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def upload_box(upload_id: str, message_id: str, children: Any, *, cls: str = "upload-box",
               max_bytes: int | None = None) -> html.Div:
    """A ``dcc.Upload`` for images, checked in the browser before anything is sent.

    ``assets/upload_guard.js`` reads the wrapper's ``data-*`` attributes: a file of another
    format, an empty one or one over ``max_bytes`` (default ``config.MAX_UPLOAD_BYTES``) is
    stopped before it is read, with a message in ``message_id``, so no callback is sent; a 413
    from the callback route (a page older than the limit) is shown there too. The server still
    checks everything again (``uploads.parse_upload``).
    """
    limit = config.MAX_UPLOAD_BYTES if max_bytes is None else int(max_bytes)
    exts, mimes = upload_formats()
    accept = ",".join(exts + mimes)
    return html.Div(
        dcc.Upload(id=upload_id, multiple=False, accept=accept, max_size=-1, className=cls,
                   children=children),
        className="upload-guard",
        **{"data-upload-guard": "1", "data-upload-id": upload_id,
           "data-message-id": message_id, "data-max-bytes": str(limit),
           "data-accept": accept, "data-formats": upload_formats_text()},
    )


def timing_text(ms: float, device: str, cached: bool, compute_ms: float | None = None) -> str:
    """"computed in 123 ms (CPU)" or "from cache in 0.4 ms (computed in 123 ms on CPU)"."""
    if cached:
        extra = f" (computed in {compute_ms:,.0f} ms on {device})" if compute_ms is not None else ""
        return f"from cache in {ms:,.1f} ms{extra}"
    return f"computed in {ms:,.0f} ms ({device})"
