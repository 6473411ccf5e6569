"""One Redis client constructor for every Redis-backed store (online store, event log), so a malformed URL
reads the same everywhere: a ConfigError naming the loopstack.yaml key to fix, not redis-py's ValueError."""
from __future__ import annotations

from typing import Any

from loopstack.errors import ConfigError


def redis_from_url(url: str, what: str, key: str) -> Any:
    """`redis.Redis.from_url(url)`; a malformed `url` (no redis:// scheme, a port that is not a number) is a
    ConfigError saying `what` it was for and which `key` to set."""
    import redis
    try:
        return redis.Redis.from_url(url)
    except ValueError as exc:
        raise ConfigError(f"{what}: {url!r} is not a Redis URL ({exc}); set `{key}` in loopstack.yaml to e.g. "
                          "redis://127.0.0.1:6379/0") from None
