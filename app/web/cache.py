"""The dashboard's shared flask-caching ``Cache``, unbound until ``create_app`` binds it.

It lives here, not in ``app.web.main``, because pages import it while ``Dash(...)`` is being built.
A ``FileSystemCache`` under ``config.CACHE_DIR`` by default (shared by gunicorn workers, unlike
``SimpleCache``); a ``RedisCache`` when ``UNET_LENS_REDIS_URL`` is set. Only values the app
computed itself are stored (labels, silhouettes, summaries), never anything from a request.
"""

from __future__ import annotations

import os

from flask_caching import Cache

from app import config

cache = Cache()

#: One day: cached values are keyed by run id + run version, so they never go stale.
DEFAULT_TIMEOUT = 24 * 3600


def default_config() -> dict:
    """The cache configuration from the environment (Redis if asked, else the file system)."""
    redis_url = os.environ.get("UNET_LENS_REDIS_URL")
    if redis_url:
        return {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": "unet-lens:",
            "CACHE_DEFAULT_TIMEOUT": DEFAULT_TIMEOUT,
        }
    return {
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": str(config.CACHE_DIR),
        "CACHE_DEFAULT_TIMEOUT": DEFAULT_TIMEOUT,
        "CACHE_THRESHOLD": 2000,
    }


__all__ = ["DEFAULT_TIMEOUT", "cache", "default_config"]
