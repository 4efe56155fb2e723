"""Tile images by id: ``GET /img/<run_id>/<kind>/<tile_id>``.

The browser names a run, a kind and a tile id; each is checked against what the server knows (the
run must be listed, the kind one of ``THUMB_KINDS``, the id a key of the run's index) and the file
path comes from ``EmbeddingsRun.file_for``, never from the URL. Anything else is a 404. Files are
immutable within a run version, and image URLs carry ``?v=<run version>`` so a rebuilt run gets
new URLs; responses are cacheable for a day with an ETag.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, abort, send_file

from app.artifacts import THUMB_KINDS
from app.web import state

bp = Blueprint("unet_lens_images", __name__)

CACHE_CONTROL = "public, max-age=86400, immutable"
_MIMETYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@bp.get("/img/<run_id>/<kind>/<tile_id>")
def tile_image(run_id: str, kind: str, tile_id: str) -> Response:
    """Serve one stored image of a tile, or 404."""
    if kind not in THUMB_KINDS:
        abort(404)
    run = state.get_run(run_id)
    if run is None:
        abort(404)
    path = run.file_for(kind, tile_id)
    if path is None:
        abort(404)
    response = send_file(
        path,
        mimetype=_MIMETYPES.get(path.suffix.lower(), "application/octet-stream"),
        conditional=True,
        etag=True,
        max_age=86400,
    )
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/img/")
@bp.get("/img/<path:_rest>")
def not_an_image(_rest: str = "") -> Response:
    """Any other path under /img/ is a plain 404 (not the dashboard's page fallback)."""
    abort(404)


def img_url(run_id: str, kind: str, tile_id: str, version: str = "") -> str:
    """The URL of a tile image (ids are percent-encoded; the route validates them anyway)."""
    url = f"/img/{quote(run_id, safe='')}/{quote(kind, safe='')}/{quote(tile_id, safe='')}"
    return f"{url}?v={quote(version, safe='')}" if version else url


__all__ = ["CACHE_CONTROL", "bp", "img_url", "not_an_image", "tile_image"]
