"""The Dash shell: navbar with the run picker, the page container and the health banner.

``create_app(...)`` builds a ``Dash`` whose pages live in ``app/web/pages`` (imported as
``app.web.pages.*`` while ``Dash(...)`` is built, which is why shared objects live in
``app.web.cache`` and ``app.web.runs``, never here). ``server`` (for gunicorn:
``app.web.main:server``) is created on first access, so importing this module builds nothing.
``run()`` serves with debug off on 127.0.0.1 by default.

Serving hardening (limits, headers, CSP, error handlers, the cache binding) is
:func:`app.web.server.harden`. Pages register their callbacks with ``dash.callback`` when
``Dash(...)`` imports them; Dash hands them to the first app that serves a request, so a process
builds one app (tests that need another run it in a subprocess).
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dash
from dash import ALL, Dash, Input, Output, State, dcc, html, no_update
from flask import Flask

from app import config
from app.web import health, ids, runs
from app.web.server import harden

log = logging.getLogger(__name__)

PAGES_DIR = Path(__file__).resolve().parent / "pages"
TITLE = "U-Net Lens"

_default_app: Dash | None = None
_default_lock = threading.Lock()


def _nav_pages() -> list[dict[str, Any]]:
    pages = [p for p in dash.page_registry.values() if p.get("nav", True)]
    return sorted(pages, key=lambda p: (p.get("order") is None, p.get("order") or 0, p["name"]))


def navbar() -> html.Header:
    """Brand, page links and the embeddings-run picker (hidden when there is only one run)."""
    run_ids = runs.list_embeddings_runs()
    current = runs.default_run_id()
    links = [
        dcc.Link(p["name"], href=p["relative_path"], className="nav-link",
                 id={"type": ids.NAV_LINK, "index": p["relative_path"]})
        for p in _nav_pages()
    ]
    picker_style = {} if len(run_ids) > 1 else {"display": "none"}
    return html.Header([
        html.Div([
            html.Span(className="brand-mark", **{"aria-hidden": "true"}),
            html.Span("U-Net Lens", className="brand-name"),
        ], className="brand"),
        html.Nav(links, className="nav-links"),
        html.Div([
            html.Label("Embeddings run", htmlFor=ids.RUN, className="run-label"),
            html.Div(dcc.Dropdown(
                id=ids.RUN, options=[{"label": r, "value": r} for r in run_ids], value=current,
                clearable=False, searchable=False, className="run-dropdown",
            ), style=picker_style, className="run-dropdown-wrap"),
            html.Span(current or "no run", id=ids.RUN_LABEL, className="run-single",
                      style={"display": "none"} if len(run_ids) > 1 else {}),
        ], className="run-picker"),
    ], className="navbar")


def health_banner() -> html.Div | None:
    """What is missing, inconsistent or not working (``health.check``: the same problems and
    warnings as ``/healthz``), or None when all is well."""
    try:
        report = health.check()
    except Exception:  # noqa: BLE001 - the banner must never break the page
        log.exception("health check failed")
        return None
    if report.ready and not report.warnings:
        return None
    title = ("Not ready: the dashboard cannot show everything until this is fixed."
             if not report.ready else "Running degraded: what will not work, and why.")
    items = [html.Li(m) for m in report.problems + report.warnings]
    return html.Div([html.Strong(title), html.Ul(items)], role="alert",
                    className="health-banner " + ("health-problem" if not report.ready
                                                  else "health-warning"), id="health-banner")


def serve_layout() -> html.Div:
    """The app shell, rebuilt per page load so new runs appear without a restart."""
    return html.Div([
        dcc.Location(id=ids.URL, refresh=False),
        navbar(),
        health_banner(),
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


def create_app(
    model_run: str | None = None,
    embeddings_run: str | None = None,
    cache_config: dict | None = None,
    *,
    embeddings_root: Path | None = None,
) -> Dash:
    """Build the dashboard. ``embeddings_root`` (tests) replaces ``config.EMBEDDINGS_DIR``."""
    runs.configure(embeddings_run=embeddings_run, model_run=model_run, root=embeddings_root)
    app = Dash(
        "app",
        server=Flask("app"),
        use_pages=True,
        pages_folder=str(PAGES_DIR),
        assets_folder=str(config.ASSETS_DIR),
        title=TITLE,
        update_title=None,
        serve_locally=True,
    )
    app.layout = serve_layout
    _register_shell_callbacks(app)
    harden(app, cache_config)
    _finish_dash_setup(app)
    return app


def _finish_dash_setup(app: Dash) -> None:
    """Run Dash's first-request set-up now, before any request is accepted.

    Dash registers the script paths it will serve, takes the pages' callbacks and adds the
    pages' router in ``before_request`` hooks of the first request, and flags each done
    *before* doing it. In a threaded worker the first requests come together (a page fetches a
    dozen scripts at once), so the others skipped the set-up while it ran and got 404 for
    React: a blank page for the first visitor of each ``--workers 2`` worker after every start.
    Running the hooks here, in a request context but outside any request (Flask stays open to
    set-up calls such as ``add_url_rule``), leaves nothing to race.
    """
    with app.server.test_request_context("/_dash-dependencies"):
        app.server.preprocess_request()


def _get_default_app() -> Dash:
    global _default_app
    with _default_lock:
        if _default_app is None:
            _default_app = create_app()
            runs.start_warm_up()  # each gunicorn worker, after the fork
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
    runs.start_warm_up()
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

