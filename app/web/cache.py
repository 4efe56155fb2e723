"""The dashboard's shared flask-caching ``Cache``, unbound until ``create_app`` binds it.

It lives here, not in ``app.web.main``, because pages import it while ``Dash(...)`` is being built.
A ``FileSystemCache`` under ``config.CACHE_DIR`` by default (shared by gunicorn workers, unlike
``SimpleCache``); a ``RedisCache`` when ``UNET_LENS_REDIS_URL`` is set. Only values the app
computed itself are stored (labels, silhouettes, summaries), never anything from a request.

Both backends are wrapped so that a broken store never breaks a page nor floods the log:

- :class:`SafeFileSystemCache`: a write that fails (disk full, read-only folder) removes its
  half-written ``tmp*.__wz_cache`` file, logs one line per kind of failure (not a traceback per
  call) and is remembered (:meth:`SafeFileSystemCache.problem`) for ``/healthz`` and the banner.
- :class:`ResilientRedisCache`: Redis with short socket timeouts (``UNET_LENS_REDIS_TIMEOUT``,
  0.5 s); the first failure opens a breaker for :data:`REDIS_RETRY_SECONDS`, during which every
  call goes to a local :class:`SafeFileSystemCache` (or no cache) without touching Redis, and one
  call retries after that. One log line per kind of failure per outage, one when Redis is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cachelib import NullCache as CachelibNullCache
from flask_caching import Cache
from flask_caching.backends.base import BaseCache
from flask_caching.backends.filesystemcache import FileSystemCache

from app import config

log = logging.getLogger(__name__)

cache = Cache()

#: One day: cached values are keyed by run id + run version, so they never go stale.
DEFAULT_TIMEOUT = 24 * 3600
#: Connect and read timeout of every Redis call, seconds (``UNET_LENS_REDIS_TIMEOUT``).
REDIS_TIMEOUT = float(os.environ.get("UNET_LENS_REDIS_TIMEOUT", "0.5") or 0.5)
#: After a Redis failure, calls skip Redis this long before one of them tries it again.
REDIS_RETRY_SECONDS = float(os.environ.get("UNET_LENS_REDIS_RETRY", "10") or 10)

FILE_BACKEND = "app.web.cache.SafeFileSystemCache"
REDIS_BACKEND = "app.web.cache.ResilientRedisCache"


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
    return file_config()


def file_config() -> dict:
    """The file-system cache under ``config.CACHE_DIR`` (also Redis's local fallback)."""
    return {
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": str(config.CACHE_DIR),
        "CACHE_DEFAULT_TIMEOUT": DEFAULT_TIMEOUT,
        "CACHE_THRESHOLD": 2000,
    }


#: Bytes written by :func:`write_probe`: enough to need a data block (a full disk refuses it).
PROBE_BYTES = 4096


def write_probe(folder: Path) -> str | None:
    """Why a file cannot be written to and deleted from ``folder`` (a real write), or None."""
    path: str | None = None
    try:
        fd, path = tempfile.mkstemp(dir=folder, prefix=".probe-")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(path)
        path = None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return None


def redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class _OncePerKind:
    """Log a failure once per kind (exception type + errno) until :meth:`reset`."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first(self, kind: str) -> bool:
        with self._lock:
            if kind in self._seen:
                return False
            self._seen.add(kind)
            return True

    def reset(self) -> bool:
        with self._lock:
            had = bool(self._seen)
            self._seen.clear()
            return had


def _kind(exc: BaseException) -> str:
    errno = getattr(exc, "errno", None)
    return f"{type(exc).__name__}{f'[{errno}]' if errno else ''}"


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- file system


class SafeFileSystemCache(FileSystemCache):
    """``FileSystemCache`` whose failed writes leave nothing behind and are remembered."""

    def __init__(self, cache_dir: str, *args: Any, **kwargs: Any) -> None:
        self._failures = _OncePerKind()
        self._last_error: tuple[float, str] | None = None
        super().__init__(cache_dir, *args, **kwargs)

    @classmethod
    def factory(cls, app: Any, config: dict[str, Any], args: list[Any],
                kwargs: dict[str, Any]) -> SafeFileSystemCache:
        args.insert(0, config["CACHE_DIR"])
        kwargs.update(threshold=config["CACHE_THRESHOLD"],
                      hash_method=config["CACHE_FILE_HASH_METHOD"])
        return cls(*args, **kwargs)

    @property
    def path(self) -> str:
        return str(self._path)

    def problem(self, within: float = 300.0) -> str | None:
        """Why the last write failed, if one failed in the last ``within`` seconds."""
        last = self._last_error
        if last is None or time.monotonic() - last[0] > within:
            return None
        return last[1]

    def _failed(self, exc: OSError, filename: str) -> None:
        why = _describe(exc)
        self._last_error = (time.monotonic(), f"cannot write to cache folder {self._path} ({why})")
        if self._failures.first(_kind(exc)):
            log.warning("cache folder %s cannot be written (%s); values are recomputed "
                        "until it can (logged once per kind of failure)", self._path, why)

    def set(self, key: str, value: Any, timeout: Any = None, mgmt_element: bool = False) -> bool:
        """cachelib's ``set``, except that a failed write removes its temp file (a full disk
        left empty ``tmp*.__wz_cache`` files behind) and logs one line, not a traceback."""
        if mgmt_element:
            timeout = 0
        else:
            self._prune()
        normalized_timeout = self._normalize_timeout(timeout)
        filename = self._get_filename(key)
        overwrite = os.path.isfile(filename)
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(suffix=self._fs_transaction_suffix, dir=self._path)
            with os.fdopen(fd, "wb") as f:
                f.write(struct.pack("I", normalized_timeout))
                self.serializer.dump(value, f)
            self._run_safely(os.replace, tmp, filename)
            tmp = None
            self._run_safely(os.chmod, filename, self._mode)
            fsize = Path(filename).stat().st_size
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._failed(exc, filename)
            return False
        if self._last_error is not None:
            self._last_error = None
            if self._failures.reset():
                log.info("cache folder %s can be written again", self._path)
        if not overwrite and not mgmt_element:
            self._update_count(delta=1)
        return fsize > 0


# --------------------------------------------------------------------------- Redis


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis
    except ImportError:  # pragma: no cover - only with a Redis URL, which needs the package
        return (OSError,)
    return (redis.RedisError, OSError)


class ResilientRedisCache(BaseCache):
    """Redis with short timeouts and a local fallback while it does not answer (module doc)."""

    def __init__(self, primary: BaseCache, local: Any, url: str, local_label: str,
                 default_timeout: int = 300) -> None:
        super().__init__(default_timeout=default_timeout)
        self.primary = primary
        self.local = local
        self.url = redact(url)
        self.local_label = local_label
        self._errors = _redis_errors()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_try = 0.0  # when Redis was last tried while down
        self._error: str | None = None
        self._local_used = False
        self._failures = _OncePerKind()

    @classmethod
    def factory(cls, app: Any, config: dict[str, Any], args: list[Any],
                kwargs: dict[str, Any]) -> ResilientRedisCache:
        from flask_caching.backends.rediscache import RedisCache
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = float(config.get("UNET_LENS_REDIS_TIMEOUT") or REDIS_TIMEOUT)
        # No retries inside redis-py: the breaker below decides when Redis is tried again.
        config = {**config, "CACHE_OPTIONS": {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry_on_timeout": False, "retry": Retry(NoBackoff(), 0),
            **(config.get("CACHE_OPTIONS") or {})}}
        primary = RedisCache.factory(app, config, list(args), dict(kwargs))
        local_dir = config.get("UNET_LENS_LOCAL_CACHE_DIR")
        default_timeout = kwargs.get("default_timeout", DEFAULT_TIMEOUT)
        if local_dir:
            local: Any = SafeFileSystemCache(local_dir, threshold=2000,
                                             default_timeout=default_timeout)
            label = f"the local cache folder {local_dir}"
        else:
            local, label = CachelibNullCache(), "no cache (values are recomputed)"
        return cls(primary, local, str(config.get("CACHE_REDIS_URL") or ""), label,
                   default_timeout=default_timeout)

    # ------------------------------------------------------------------ breaker
    @property
    def client(self) -> Any:
        return self.primary._write_client

    def _try_primary(self) -> bool:
        """True when this call may use Redis: it is up, or this call is the one retry."""
        with self._lock:
            if self._down_since is None:
                return True
            now = time.monotonic()
            if now - self._last_try < REDIS_RETRY_SECONDS:
                return False
            self._last_try = now  # this call retries; the others keep to the fallback
            return True

    def _up(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            self._down_since, self._error = None, None
        if self._failures.reset():
            log.warning("Redis cache at %s answers again", self.url)

    def _down(self, exc: BaseException) -> None:
        why = _describe(exc)
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            self._last_try = now
            self._error = why
        if self._failures.first(_kind(exc)):
            log.warning("Redis cache at %s is unreachable (%s): using %s, retrying every %g s "
                        "(logged once per kind of failure)", self.url, why, self.local_label,
                        REDIS_RETRY_SECONDS)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._try_primary():
            try:
                result = getattr(self.primary, name)(*args, **kwargs)
            except self._errors as exc:
                self._down(exc)
            else:
                self._up()
                return result
        self._local_used = True
        return getattr(self.local, name)(*args, **kwargs)

    def ping(self) -> str | None:
        """Why Redis does not answer now (a real PING unless the breaker is open), or None."""
        if not self._try_primary():
            return self._error
        try:
            self.client.ping()
        except self._errors as exc:
            self._down(exc)
            return self._error
        self._up()
        return None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"url": self.url, "reachable": self._down_since is None,
                    "error": self._error, "fallback": self.local_label}

    # ------------------------------------------------------------------ the cache protocol
    def get(self, key: str) -> Any:
        value = self._call("get", key)
        if value is None and self._local_used and self._down_since is None:
            value = self.local.get(key)  # stored while Redis was down
        return value

    def set(self, key: str, value: Any, timeout: Any = None) -> Any:
        return self._call("set", key, value, timeout)

    def add(self, key: str, value: Any, timeout: Any = None) -> Any:
        return self._call("add", key, value, timeout)

    def delete(self, key: str) -> Any:
        if self._local_used:
            self.local.delete(key)
        return self._call("delete", key)

    def delete_many(self, *keys: str) -> Any:
        if self._local_used:
            self.local.delete_many(*keys)
        return self._call("delete_many", *keys)

    def has(self, key: str) -> Any:
        return self._call("has", key)

    def clear(self) -> Any:
        if self._local_used:
            self.local.clear()
        return self._call("clear")

    def get_many(self, *keys: str) -> Any:
        return self._call("get_many", *keys)

    def set_many(self, mapping: dict, timeout: Any = None) -> Any:
        return self._call("set_many", mapping, timeout)

    def inc(self, key: str, delta: int = 1) -> Any:
        return self._call("inc", key, delta)

    def dec(self, key: str, delta: int = 1) -> Any:
        return self._call("dec", key, delta)


def backend(flask_app: Any) -> Any:
    """The cache backend bound to ``flask_app`` (None before ``create_app``)."""
    return (getattr(flask_app, "extensions", {}).get("cache") or {}).get(cache)


def write_problem(flask_app: Any) -> str | None:
    """Why the last cache write failed (recently), for a page that found its value missing."""
    found = backend(flask_app)
    target = getattr(found, "local", found) if isinstance(found, ResilientRedisCache) else found
    if isinstance(found, ResilientRedisCache) and found.status()["reachable"]:
        return None
    return target.problem() if isinstance(target, SafeFileSystemCache) else None


__all__ = [
    "DEFAULT_TIMEOUT", "FILE_BACKEND", "REDIS_BACKEND", "REDIS_RETRY_SECONDS", "REDIS_TIMEOUT",
    "ResilientRedisCache", "SafeFileSystemCache", "backend", "cache", "default_config",
    "file_config", "redact", "write_probe", "write_problem",
]
