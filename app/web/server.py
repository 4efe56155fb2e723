"""Flask hardening of the dashboard's server: limits, uploads, headers, errors and the cache.

:func:`harden` binds, on the ``Flask`` server under a ``Dash`` app: ``/healthz`` and the ``/api``
and ``/img`` blueprints; request bodies capped at ``config.MAX_UPLOAD_BYTES`` (413 beyond;
Dash's callback route gets the base64 overhead on top); uploads parsed into memory (never
spooled to disk); suspicious paths refused; security headers on every response, including a
Content-Security-Policy built from Dash's own inline-script hashes; large JSON gzipped; an
unexpected exception answered with a plain "internal error" (logged with its traceback, never
shown); and the shared cache, whose folder falls back to a temp folder or to no cache when it
cannot be written.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import re
import stat
import sys
import sysconfig
import tempfile
import traceback
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from dash import Dash
from dash.exceptions import DependencyException
from flask import Request, Response, abort, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound

from app import config
from app.web import api, health, images
from app.web.cache import (
    FILE_BACKEND,
    REDIS_BACKEND,
    cache,
    default_config,
    file_config,
    write_probe,
)
from app.web.uploads import fmt_bytes

log = logging.getLogger(__name__)


def harden(app: Dash, cache_config: dict | None = None) -> None:
    """Bind the blueprints, limits, headers, error handlers and cache to ``app``'s server.

    Call it after the app's own callbacks are registered: the CSP hashes Dash's inline scripts
    on the first response.
    """
    server = app.server
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
    server.after_request(_csp_hook(app))


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


#: Browser features the dashboard never uses, switched off for it and anything it embeds.
PERMISSIONS_POLICY = ", ".join(f"{feature}=()" for feature in (
    "camera", "microphone", "geolocation", "payment", "usb", "serial", "midi",
    "magnetometer", "gyroscope", "accelerometer", "display-capture",
))


def _security_headers(response: Response) -> Response:
    """Security headers on every response; HTML and the layout are never reused from a cache
    (they carry the run list, the model's state and Dash's script hashes of this build)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
    if response.mimetype == "text/html" or (request.path or "").endswith(
            ("/_dash-layout", "/_dash-dependencies")):
        response.headers.setdefault("Cache-Control", "no-store")
    if response.status_code >= 400:
        _scrub_error_body(response)
    return response


#: Error bodies larger than this are left as they are (they are not ours: ours are short).
SCRUB_MAX_BYTES = 64 * 1024


def _scrub_error_body(response: Response) -> None:
    """Absolute server paths in an error response become short names (``model_store/...``).

    Our own messages already say "model_store/run"; this catches whatever a library put in an
    exception text on its way to an error page.
    """
    if response.direct_passthrough or response.is_streamed or response.mimetype not in (
            "text/html", "text/plain", "application/json"):
        return
    data = response.get_data()
    if len(data) > SCRUB_MAX_BYTES:
        return
    text = data.decode("utf-8", "replace")
    clean = hide_paths(text)
    if clean != text:
        response.set_data(clean.encode("utf-8"))


def hide_paths(text: str) -> str:
    """``text`` with no absolute path of this server: the stores and the repository become
    short names (:func:`health.tidy`), and the interpreter's, temp and home folders ``…``."""
    text = health.tidy(text)
    others = {sys.prefix, sys.base_prefix, sysconfig.get_paths().get("purelib", ""),
              tempfile.gettempdir(), os.path.expanduser("~")}
    for root in sorted((r.rstrip("/") for r in others if r and r.rstrip("/")), key=len,
                       reverse=True):
        text = re.sub(r"(?<![\w.~/-])" + re.escape(root) + r"(?=/|(?![\w~-]|\.\w))", "…",
                      text)
    return text


def _csp_hook(app: Dash) -> Any:
    """An ``after_request`` hook adding the CSP, computed for each response.

    Not once per process: a clientside callback registered after the first response (a module
    imported on first use) would be missing from a memoised policy, and the browser would
    refuse its inline script. Hashing Dash's few inline scripts costs microseconds.
    """

    def add_csp(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", content_security_policy(app))
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
    """404, 405, 413, ...: JSON under /api (and for JSON clients), Werkzeug's page otherwise.

    A 413 says which limit: the upload limit in bytes, and on Dash's callback route that the
    file is counted there as base64 (the page's script shows it as the upload message).
    """
    if not _wants_json():
        page = exc.get_response()  # a plain response: the path scrub can read its body
        page.headers["Cache-Control"] = "no-store"
        return page
    limit = fmt_bytes(config.MAX_UPLOAD_BYTES)
    too_large = (f"request body larger than {config.MAX_UPLOAD_BYTES:,} bytes.")
    if exc.code == 413 and _is_callback_route():
        too_large = (f"The file is too large: the upload limit is {limit} "
                     "(UNET_LENS_MAX_UPLOAD_BYTES). Crop or compress the image and try again.")
    message = {
        404: "not found.", 405: "method not allowed.", 413: too_large,
    }.get(exc.code or 0, (exc.description or exc.name or "error").split("\n")[0])
    response = jsonify({"error": message})
    response.status_code = exc.code or 500
    response.headers["Cache-Control"] = "no-store"
    return response


def _is_callback_route() -> bool:
    return (request.path or "").endswith("/_dash-update-component")


#: Exceptions that a callback raises on an input of the wrong type or form (``int("../..")``,
#: ``None + 1``): answered 400 on the callback route, never 500.
INPUT_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError)

#: Longest exception text (and request summary) a log record carries.
LOG_TEXT_MAX = 300


def _handle_unexpected(exc: Exception) -> Any:
    """Any other exception: logged with a bounded summary, answered with a plain "internal error".

    On Dash's callback route a ``TypeError`` / ``ValueError`` is bad input, not a server fault:
    the browser only sends values of the declared components, so these come from crafted or
    stale payloads (``clusters-k="../../etc"``). They answer 400 with a short message, and are
    logged as a warning with the same bounded summary (a real bug still shows in the log).
    """
    if isinstance(exc, HTTPException):
        return _handle_http_error(exc)
    if _is_callback_route() and isinstance(exc, INPUT_ERRORS):
        log.warning("bad callback input on %s: %s", request.path, error_summary(exc))
        response = jsonify({"error": f"invalid callback input ({type(exc).__name__})."})
        response.status_code = 400
        response.headers["Cache-Control"] = "no-store"
        return response
    log.error("unhandled exception on %s %s (%s): %s\n%s", request.method, request.path,
              _body_summary(), error_summary(exc), _short_traceback(exc))
    if _wants_json():
        response = jsonify({"error": "internal error"})
    else:
        response = Response("internal error\n", mimetype="text/plain")
    response.status_code = 500
    response.headers["Cache-Control"] = "no-store"
    return response


def _clip(text: str, limit: int = LOG_TEXT_MAX) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def error_summary(exc: BaseException) -> str:
    """``"ValueError: <at most LOG_TEXT_MAX characters>"``: an exception text can quote a whole
    request value (100 KB), so the log gets its start and its length only."""
    return f"{type(exc).__name__}: {_clip(str(exc))}"


def _body_summary() -> str:
    """The request body described, never quoted: its size and type (and a callback's output)."""
    size = request.content_length
    parts = [f"body {size:,} bytes" if size is not None else "no body"]
    if request.mimetype:
        parts.append(request.mimetype)
    if _is_callback_route():
        payload = request.get_json(silent=True, cache=True)
        if isinstance(payload, dict) and isinstance(payload.get("output"), str):
            parts.append(f"output {_clip(payload['output'], 120)}")
    return ", ".join(parts)


#: Frames of the traceback kept in a log record (the innermost ones).
LOG_FRAMES = 12


def _short_traceback(exc: BaseException) -> str:
    """The innermost frames of the traceback (file, line, function, source line): where it
    failed, without the exception text again and without local values."""
    frames = traceback.extract_tb(exc.__traceback__)[-LOG_FRAMES:]
    return "".join(traceback.format_list(frames)).rstrip()


def usable_cache_config(cfg: dict, *, quiet: bool = False) -> tuple[dict, dict[str, Any]]:
    """``(config, info)``: a ``FileSystemCache`` whose folder cannot be written falls back to a
    per-user temp folder, then to a ``NullCache``, with a logged warning in ``info``.

    File and Redis caches are bound as their safe variants (``app.web.cache``): a failed file
    write leaves no temp file; Redis gets short timeouts and, while it does not answer, the
    local folder above (or no cache) instead.
    """
    cache_type = cfg.get("CACHE_TYPE", "")
    info: dict[str, Any] = {"type": cache_type, "ok": True}
    if cache_type == "RedisCache":
        info["url"] = cfg.get("CACHE_REDIS_URL")
        _, local_info = usable_cache_config(file_config(), quiet=True)
        info["local_dir"] = local_info.get("dir") if local_info["type"] == "FileSystemCache" \
            else None
        return {**cfg, "CACHE_TYPE": REDIS_BACKEND,
                "UNET_LENS_LOCAL_CACHE_DIR": info["local_dir"]}, info
    if cache_type != "FileSystemCache":
        return cfg, info
    wanted = Path(cfg.get("CACHE_DIR") or config.CACHE_DIR)
    problem = _unwritable(wanted)
    if problem is None:
        info["dir"] = str(wanted)
        return {**cfg, "CACHE_TYPE": FILE_BACKEND}, info
    fallback = Path(tempfile.gettempdir()) / f"unet-lens-cache-{os.getuid()}"
    if _unwritable(fallback, private=True) is None:
        info.update(ok=False, dir=str(fallback), warning=(
            f"Cache folder {wanted} cannot be written ({problem}); using {fallback} instead."))
        if not quiet:
            log.warning("%s", info["warning"])
        return {**cfg, "CACHE_TYPE": FILE_BACKEND, "CACHE_DIR": str(fallback)}, info
    info.update(type="NullCache", ok=False, warning=(
        f"Cache folder {wanted} cannot be written ({problem}), nor {fallback}; running "
        "without a cache (values are recomputed)."))
    if not quiet:
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
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return write_probe(folder)


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



__all__ = [
    "GZIP_MIN_BYTES", "INPUT_ERRORS", "InMemoryUploadRequest", "PERMISSIONS_POLICY",
    "content_security_policy", "dash_callback_limit", "error_summary", "harden", "hide_paths",
    "usable_cache_config",
]
