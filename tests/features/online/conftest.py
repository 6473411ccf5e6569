"""Fixtures for the online store suites: every backend, on real servers (redis-server on loopback)."""
from __future__ import annotations

import uuid

import pytest

from loopstack.features.online import open_online_store


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_args(backend, tmp_path, request) -> dict:
    """Arguments that open the same fresh store again (e.g. in another process)."""
    if backend == "sqlite":
        return {"backend": "sqlite", "path": str(tmp_path / "online.db")}
    return {"backend": "redis", "url": request.getfixturevalue("redis_url"), "prefix": f"t{uuid.uuid4().hex[:10]}"}


@pytest.fixture
def store(store_args):
    """A fresh, empty online store of each backend."""
    s = open_online_store(**store_args)
    yield s
    s.clear()
    s.close()
