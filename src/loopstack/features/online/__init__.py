"""Box 6, the online store: backends (sqlite, redis) behind `OnlineStore`, and `OnlineFeatures`."""
from __future__ import annotations

from pathlib import Path

from loopstack.errors import ConfigError
from loopstack.features.online.base import OnlineStore, WriteBatch

BACKENDS = ("sqlite", "redis")


def open_online_store(backend: str, *, path: str | Path | None = None, url: str | None = None,
                      prefix: str = "loopstack", spin_us: int | None = None, populate: bool = True,
                      cache_mb: int = 0) -> OnlineStore:
    """Open the online store `backend` ("sqlite" needs `path`, "redis" needs `url`; `spin_us`: see
    `RedisOnlineStore`, None for its default; `populate` and `cache_mb`: see `SQLiteOnlineStore`)."""
    if backend == "sqlite":
        if path is None:
            raise ConfigError("online store 'sqlite' needs a file path (set `online.path` in loopstack.yaml)")
        from loopstack.features.online.sqlite import SQLiteOnlineStore
        return SQLiteOnlineStore(path, populate=populate, cache_mb=cache_mb)
    if backend == "redis":
        if not url:
            raise ConfigError("online store 'redis' needs a URL like redis://127.0.0.1:6379/0 "
                              "(set `online.url` in loopstack.yaml)")
        from loopstack.features.online.redis import RedisOnlineStore
        return RedisOnlineStore(url, prefix) if spin_us is None else RedisOnlineStore(url, prefix, spin_us)
    raise ConfigError(f"online store backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "OnlineStore", "WriteBatch", "open_online_store"]
