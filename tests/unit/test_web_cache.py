"""The shared flask-caching cache: file system by default, Redis when configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.web import runs
from app.web.cache import cache, default_config
from app.web.logic import clusters
from tests.fixture_run import shared_fixture_run
from tests.serving import redis_server
from tests.webapp import built_app


def test_default_is_a_file_system_cache(monkeypatch) -> None:
    monkeypatch.delenv("UNET_LENS_REDIS_URL", raising=False)
    cfg = default_config()
    assert cfg["CACHE_TYPE"] == "FileSystemCache" and cfg["CACHE_DIR"].endswith("flask")


def test_redis_when_the_url_is_set(monkeypatch) -> None:
    monkeypatch.setenv("UNET_LENS_REDIS_URL", "redis://127.0.0.1:6390/0")
    cfg = default_config()
    assert cfg["CACHE_TYPE"] == "RedisCache"
    assert cfg["CACHE_REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert cfg["CACHE_KEY_PREFIX"] == "unet-lens:"


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.getbasetemp() / "web-fixture"
    return root, shared_fixture_run(root)


def test_file_system_cache_is_shared_between_apps(fixture_root, tmp_path: Path) -> None:
    """Two app instances (like two gunicorn workers) see each other's cached labels."""
    root, run_id = fixture_root
    cfg = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(tmp_path / "cache")}
    one = built_app(embeddings_root=root, cache_config=cfg)
    run = runs.get_run(run_id)
    version = runs.run_version(run)
    with one.server.test_request_context():
        labels, _ = clusters.cached_labels(run_id, version, 7)
    assert any((tmp_path / "cache").iterdir())
    two = built_app(embeddings_root=root, cache_config=cfg)
    with two.server.test_request_context():
        assert cache.get(clusters.cached_labels.make_cache_key(
            clusters.cached_labels.uncached, run_id, version, 7)) is not None
        again, _ = clusters.cached_labels(run_id, version, 7)
    assert (again == labels).all()


@pytest.fixture()
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def test_redis_cache_stores_cluster_labels(fixture_root, redis_url: str, monkeypatch) -> None:
    import redis

    root, run_id = fixture_root
    monkeypatch.setenv("UNET_LENS_REDIS_URL", redis_url)
    app = built_app(embeddings_root=root)  # cache config from the environment
    run = runs.get_run(run_id)
    with app.server.test_request_context():
        labels, source = clusters.cached_labels(run_id, runs.run_version(run), 8)
    assert source == "re-clustered" and len(set(labels.tolist())) == 8
    keys = redis.Redis.from_url(redis_url).keys("unet-lens:*")
    assert keys, "nothing was written to Redis"


def test_caches_are_bound_as_their_safe_variants(fixture_root, tmp_path: Path,
                                                 monkeypatch) -> None:
    """A file cache whose writes clean up after themselves; Redis behind a breaker with short
    timeouts and the local folder as its fallback."""
    from app import config
    from app.web import cache as web_cache
    from tests.serving import free_port

    root, _ = fixture_root
    monkeypatch.setattr(config, "CACHE_DIR", tmp_path / "local")
    app = built_app(embeddings_root=root, cache_config={
        "CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(tmp_path / "cache")})
    assert isinstance(web_cache.backend(app.server), web_cache.SafeFileSystemCache)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = built_app(embeddings_root=root, cache_config={
        "CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": url})
    found = web_cache.backend(app.server)
    assert isinstance(found, web_cache.ResilientRedisCache)
    assert isinstance(found.local, web_cache.SafeFileSystemCache)
    assert found.local.path == str(tmp_path / "local")
    with app.server.app_context():
        assert cache.set("x", 1) and cache.get("x") == 1  # Redis is down: the local folder
    assert found.status()["reachable"] is False and any((tmp_path / "local").iterdir())
