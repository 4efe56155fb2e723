"""The Dash app: navbar with the run picker, pages, the image route and the cache binding.

``create_app(...)`` builds a ``Dash`` whose pages live in ``app/web/pages`` (imported as
``app.web.pages.*`` while ``Dash(...)`` is built, which is why shared objects live in
``app.web.cache`` and ``app.web.state``, never here). ``server`` (for gunicorn:
``app.web.main:server``) is created on first access, so importing this module builds nothing.
``run()`` serves with debug off on 127.0.0.1 by default.

Serving hardening lives here too: ``/healthz`` and the ``/api`` blueprint are bound, request
bodies are capped at ``config.MAX_UPLOAD_BYTES`` (413 beyond; Dash's callback route gets the
base64 overhead on top), uploads are parsed into memory (never spooled to disk), every response
carries security headers including a Content-Security-Policy built from Dash's own inline-script
hashes, an unexpected exception answers a plain "internal error" (logged with its traceback,
never shown), a cache folder that cannot be written falls back to a temp folder or no cache, and
the page shell shows a banner when the artifacts are missing or inconsistent.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import math
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote

import dash
from dash import ALL, Dash, Input, Output, State, dcc, html, no_update
from dash.exceptions import DependencyException
from flask import Flask, Request, Response, abort, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound

from app import config
from app.web import api, health, ids, images, runs
from app.web.cache import cache, default_config

log = logging.getLogger(__name__)

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
    """What is missing or inconsistent (from ``health.check``), or None when all is well."""
    try:
        report = health.check()
    except Exception:  # noqa: BLE001 - the banner must never break the page
        log.exception("health check failed")
        return None
    if report.ready and not report.warnings:
        return None
    title = ("The dashboard cannot show everything: some artifacts are missing or unreadable."
             if not report.ready else "Running with warnings.")
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


def content_security_policy(app: Dash) -> str:
    """The CSP for the dashboard: everything from this origin, Dash's inline scripts by hash.

    ``'unsafe-eval'`` is needed by plotly's WebGL traces (regl compiles shaders with
    ``new Function``) and ``'unsafe-inline'`` styles by plotly's injected ``<style>`` elements;
    ``img-src data:`` by computed images (heat maps, masks) sent as data URIs.
    """
    scripts = " ".join(["'self'", "'unsafe-eval'", *app.csp_hashes()])
    return "; ".join([
        "default-src 'self'",
        f"script-src {scripts}",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ])


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _csp_hook(app: Dash) -> Any:
    """An ``after_request`` hook adding the CSP, computed once all callbacks are registered."""
    holder: dict[str, str] = {}

    def add_csp(response: Response) -> Response:
        if "csp" not in holder:
            holder["csp"] = content_security_policy(app)
        response.headers.setdefault("Content-Security-Policy", holder["csp"])
        return response

    return add_csp


class InMemoryUploadRequest(Request):
    """Multipart file parts are parsed into memory, never spooled to a temp file on disk.

    The body is already capped by ``MAX_CONTENT_LENGTH``, so memory is bounded too.
    """

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def dash_callback_limit(max_upload: int) -> int:
    """Body limit of Dash's callback route: an upload of ``max_upload`` bytes arrives there
    base64-encoded inside JSON (4/3 of its size) plus the callback's other inputs."""
    return int(math.ceil(max_upload * 4 / 3)) + 1024 * 1024


#: Paths under these prefixes belong to our blueprints: anything they do not route is a 404, never
#: the dashboard's page fallback (e.g. ``/img//etc/passwd``).
_OWN_PREFIXES = ("/img", "/api")
_OWN_BLUEPRINTS = frozenset({images.bp.name, api.bp.name})


def _reject_suspicious_paths() -> None:
    """404 for a path with a ``..`` segment, a backslash or a NUL (also once more decoded, for
    double-encoded input), and for anything under /img or /api that our routes did not match."""
    path = request.path or "/"
    decoded = unquote(path)
    for candidate in (path, decoded):
        if "\x00" in candidate or "\\" in candidate or ".." in candidate.split("/"):
            abort(404)
    top = "/" + path.lstrip("/").split("/", 1)[0]
    if (top in _OWN_PREFIXES or path.startswith(tuple(p + "/" for p in _OWN_PREFIXES))) and \
            request.blueprint not in _OWN_BLUEPRINTS:
        abort(404)


def _dependency_not_found(_exc: DependencyException) -> Any:
    """Dash's component-suite route refuses a path it did not register: a plain 404."""
    return _handle_http_error(NotFound())


def _wants_json() -> bool:
    path = request.path or ""
    if path.startswith(("/api/", "/_dash-", "/healthz")):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def _handle_http_error(exc: HTTPException) -> Any:
    """404, 405, 413, ...: JSON under /api (and for JSON clients), Werkzeug's page otherwise."""
    if not _wants_json():
        return exc
    message = {
        404: "not found.", 405: "method not allowed.",
        413: f"request body larger than {config.MAX_UPLOAD_BYTES:,} bytes.",
    }.get(exc.code or 0, (exc.description or exc.name or "error").split("\n")[0])
    response = jsonify({"error": message})
    response.status_code = exc.code or 500
    return response


def _handle_unexpected(exc: Exception) -> Any:
    """Any other exception: logged with its traceback, answered with a plain "internal error"."""
    if isinstance(exc, HTTPException):
        return _handle_http_error(exc)
    log.error("unhandled exception on %s %s", request.method, request.path, exc_info=exc)
    if _wants_json():
        response = jsonify({"error": "internal error"})
    else:
        response = Response("internal error\n", mimetype="text/plain")
    response.status_code = 500
    response.headers["Cache-Control"] = "no-store"
    return response


def usable_cache_config(cfg: dict) -> tuple[dict, dict[str, Any]]:
    """``(config, info)``: a ``FileSystemCache`` whose folder cannot be written falls back to a
    per-user temp folder, then to a ``NullCache``, with a logged warning in ``info``."""
    cache_type = cfg.get("CACHE_TYPE", "")
    info: dict[str, Any] = {"type": cache_type, "ok": True}
    if cache_type == "RedisCache":
        info["url"] = cfg.get("CACHE_REDIS_URL")
        return cfg, info
    if cache_type != "FileSystemCache":
        return cfg, info
    wanted = Path(cfg.get("CACHE_DIR") or config.CACHE_DIR)
    problem = _unwritable(wanted)
    if problem is None:
        info["dir"] = str(wanted)
        return cfg, info
    fallback = Path(tempfile.gettempdir()) / f"unet-lens-cache-{os.getuid()}"
    if _unwritable(fallback, private=True) is None:
        info.update(ok=False, dir=str(fallback), warning=(
            f"Cache folder {wanted} cannot be written ({problem}); using {fallback} instead."))
        log.warning("%s", info["warning"])
        return {**cfg, "CACHE_DIR": str(fallback)}, info
    info.update(type="NullCache", ok=False, warning=(
        f"Cache folder {wanted} cannot be written ({problem}), nor {fallback}; running "
        "without a cache (values are recomputed)."))
    log.warning("%s", info["warning"])
    return {"CACHE_TYPE": "NullCache", "CACHE_NO_NULL_WARNING": True}, info


def _unwritable(folder: Path, *, private: bool = False) -> str | None:
    """Why ``folder`` cannot be used as a cache folder, or None.

    ``private`` (the shared temp dir fallback): the folder must be a real directory owned by
    this user and writable by nobody else, since the cache unpickles what it finds there.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if private:
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return "not a private folder of this user"
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


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
    runs.configure(embeddings_run=embeddings_run, model_run=model_run, root=embeddings_root)
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
    server.request_class = InMemoryUploadRequest
    server.config["MAX_CONTENT_LENGTH"] = config.MAX_UPLOAD_BYTES
    callback_limit = dash_callback_limit(config.MAX_UPLOAD_BYTES)

    server.before_request(_reject_suspicious_paths)

    @server.before_request
    def _dash_callback_limit() -> None:
        if request.path.endswith("/_dash-update-component"):
            request.max_content_length = callback_limit

    server.register_blueprint(images.bp)
    server.register_blueprint(health.bp)
    server.register_blueprint(api.bp)
    cfg, cache_status = usable_cache_config(cache_config or default_config())
    server.config["UNET_LENS_CACHE"] = cache_status
    cache.init_app(server, config=cfg)
    server.register_error_handler(HTTPException, _handle_http_error)
    server.register_error_handler(DependencyException, _dependency_not_found)
    server.register_error_handler(Exception, _handle_unexpected)
    server.after_request(_security_headers)
    server.after_request(_gzip_json)
    _register_shell_callbacks(app)
    server.after_request(_csp_hook(app))
    return app


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
