"""The Dash app: navbar with the run picker, pages, the image route and the cache binding.

``create_app(...)`` builds a ``Dash`` whose pages live in ``app/web/pages`` (imported as
``app.web.pages.*`` while ``Dash(...)`` is built, which is why shared objects live in
``app.web.cache`` and ``app.web.state``, never here). ``server`` (for gunicorn:
``app.web.main:server``) is created on first access, so importing this module builds nothing.
``run()`` serves with debug off on 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import gzip
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dash
from dash import ALL, Dash, Input, Output, State, dcc, html, no_update
from flask import Flask, Response, request

from app import config
from app.web import ids, images, state
from app.web.cache import cache, default_config

PAGES_DIR = Path(__file__).resolve().parent / "pages"
TITLE = "U-Net Lens"

_default_app: Dash | None = None
_default_lock = threading.Lock()


def _reset_page_callbacks() -> None:
    """Forget callbacks left in Dash's module-level lists (a page imported outside an app).

    Pages register callbacks with ``dash.callback`` into lists that the first app to serve a
    request takes. ``create_app`` re-imports the pages for every app, so leftovers would make
    every callback appear twice.
    """
    from dash import _callback

    _callback.GLOBAL_CALLBACK_LIST.clear()
    _callback.GLOBAL_CALLBACK_MAP.clear()
    _callback.GLOBAL_INLINE_SCRIPTS.clear()


def _claim_page_callbacks(app: Dash) -> None:
    """Move the callbacks its pages just registered into ``app`` now (Dash would on the first
    request), so a second ``create_app`` in the same process cannot take or duplicate them."""
    from dash import _callback

    for key in list(_callback.GLOBAL_CALLBACK_MAP):
        app.callback_map[key] = _callback.GLOBAL_CALLBACK_MAP.pop(key)
    app._callback_list.extend(_callback.GLOBAL_CALLBACK_LIST)
    _callback.GLOBAL_CALLBACK_LIST.clear()
    app._inline_scripts.extend(_callback.GLOBAL_INLINE_SCRIPTS)
    _callback.GLOBAL_INLINE_SCRIPTS.clear()


def _nav_pages() -> list[dict[str, Any]]:
    pages = [p for p in dash.page_registry.values() if p.get("nav", True)]
    return sorted(pages, key=lambda p: (p.get("order") is None, p.get("order") or 0, p["name"]))


def navbar() -> html.Header:
    """Brand, page links and the embeddings-run picker (hidden when there is only one run)."""
    runs = state.list_embeddings_runs()
    current = state.default_run_id()
    links = [
        dcc.Link(p["name"], href=p["relative_path"], className="nav-link",
                 id={"type": ids.NAV_LINK, "index": p["relative_path"]})
        for p in _nav_pages()
    ]
    picker_style = {} if len(runs) > 1 else {"display": "none"}
    return html.Header([
        html.Div([
            html.Span(className="brand-mark", **{"aria-hidden": "true"}),
            html.Span("U-Net Lens", className="brand-name"),
        ], className="brand"),
        html.Nav(links, className="nav-links"),
        html.Div([
            html.Label("Embeddings run", htmlFor=ids.RUN, className="run-label"),
            html.Div(dcc.Dropdown(
                id=ids.RUN, options=[{"label": r, "value": r} for r in runs], value=current,
                clearable=False, searchable=False, className="run-dropdown",
            ), style=picker_style, className="run-dropdown-wrap"),
            html.Span(current or "no run", id=ids.RUN_LABEL, className="run-single",
                      style={"display": "none"} if len(runs) > 1 else {}),
        ], className="run-picker"),
    ], className="navbar")


def serve_layout() -> html.Div:
    """The app shell, rebuilt per page load so new runs appear without a restart."""
    return html.Div([
        dcc.Location(id=ids.URL, refresh=False),
        navbar(),
        html.Main(dash.page_container, className="page"),
        html.Footer("U-Net Lens · building-segmentation U-Net inspector", className="footer"),
    ], className="shell")


def _register_shell_callbacks(app: Dash) -> None:
    app.clientside_callback(
        """
        function(path, linkIds) {
            path = path || '/';
            return linkIds.map(function(id) {
                var active = id.index === '/' ? path === '/' : path.indexOf(id.index) === 0;
                return active ? 'nav-link active' : 'nav-link';
            });
        }
        """,
        Output({"type": ids.NAV_LINK, "index": ALL}, "className"),
        Input(ids.URL, "pathname"),
        State({"type": ids.NAV_LINK, "index": ALL}, "id"),
    )

    @app.callback(
        Output(ids.RUN, "value"),
        Input(ids.URL, "search"),
        State(ids.RUN, "value"),
        State(ids.RUN, "options"),
    )
    def run_from_url(search: str | None, current: str | None, options: list[dict]) -> Any:
        """``?run=<id>`` in the URL selects that run when it is one of the listed ones."""
        wanted = parse_qs((search or "").lstrip("?")).get("run", [None])[0]
        known = {o["value"] for o in options or []}
        return wanted if wanted in known and wanted != current else no_update


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


#: JSON responses larger than this are gzipped when the browser accepts it.
GZIP_MIN_BYTES = 2048


def _gzip_json(response: Response) -> Response:
    """Gzip large JSON responses (callback outputs: maps of 10^4-10^5 tile ids shrink ~4×).

    Dash's own ``compress=True`` needs flask-compress; this is the same for the one content
    type that matters, with the standard library. Images are already compressed.
    """
    if (
        response.status_code != 200
        or response.direct_passthrough
        or response.mimetype != "application/json"
        or "Content-Encoding" in response.headers
        or "gzip" not in request.headers.get("Accept-Encoding", "").lower()
    ):
        return response
    data = response.get_data()
    if len(data) < GZIP_MIN_BYTES:
        return response
    response.set_data(gzip.compress(data, compresslevel=5))
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Content-Length"] = str(len(response.get_data()))
    response.vary.add("Accept-Encoding")
    return response


def create_app(
    model_run: str | None = None,
    embeddings_run: str | None = None,
    cache_config: dict | None = None,
    *,
    embeddings_root: Path | None = None,
) -> Dash:
    """Build the dashboard. ``embeddings_root`` (tests) replaces ``config.EMBEDDINGS_DIR``."""
    state.configure(embeddings_run=embeddings_run, model_run=model_run, root=embeddings_root)
    _reset_page_callbacks()
    server = Flask("app")
    app = Dash(
        "app",
        server=server,
        use_pages=True,
        pages_folder=str(PAGES_DIR),
        assets_folder=str(config.ASSETS_DIR),
        title=TITLE,
        update_title=None,
        suppress_callback_exceptions=True,
        serve_locally=True,
    )
    _claim_page_callbacks(app)
    app.layout = serve_layout
    server.register_blueprint(images.bp)
    cache.init_app(server, config=cache_config or default_config())
    server.after_request(_security_headers)
    server.after_request(_gzip_json)
    _register_shell_callbacks(app)
    return app


def _get_default_app() -> Dash:
    global _default_app
    with _default_lock:
        if _default_app is None:
            _default_app = create_app()
    return _default_app


def __getattr__(name: str) -> Any:
    """``server`` is built on first access (gunicorn's ``app.web.main:server``)."""
    if name == "server":
        return _get_default_app().server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(
    host: str = config.HOST,
    port: int = config.PORT,
    model_run: str | None = None,
    embeddings_run: str | None = None,
) -> None:
    """Serve the dashboard (development server, debug off, 127.0.0.1 unless told)."""
    app = create_app(model_run=model_run, embeddings_run=embeddings_run)
    print(f"U-Net Lens on http://{host}:{port}/", flush=True)
    app.run(host=host, port=port, debug=False)


def main(argv: list[str] | None = None) -> None:
    """``python -m app.web.main [--host H] [--port P] [--embeddings-run ID]``."""
    parser = argparse.ArgumentParser(prog="python -m app.web.main", description=__doc__)
    parser.add_argument("--host", default=config.HOST)
    parser.add_argument("--port", type=int, default=config.PORT)
    parser.add_argument("--model-run", default=None)
    parser.add_argument("--embeddings-run", default=None)
    args = parser.parse_args(argv)
    run(args.host, args.port, args.model_run, args.embeddings_run)


if __name__ == "__main__":
    main()
