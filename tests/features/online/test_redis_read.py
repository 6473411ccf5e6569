"""The Redis store's raw read path (protocol packed by hand, replies parsed by hiredis) against redis-py."""
from __future__ import annotations

import uuid

import pytest

from loopstack.features.online import open_online_store
from loopstack.features.online.base import WriteBatch


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def rstore(redis_url, request):
    sep = "&" if "?" in redis_url else "?"
    s = open_online_store("redis", url=f"{redis_url}{sep}protocol={request.param}", prefix=f"t{uuid.uuid4().hex[:10]}")
    yield s
    s.clear()
    s.close()


def pipeline_read(store, keys: list[str]) -> dict:
    pipe = store.r.pipeline(transaction=True)
    for k in keys:
        pipe.hgetall(store._h + k)
    return {k: {f.decode(): v for f, v in d.items()} for k, d in zip(keys, pipe.execute()) if d}


def test_raw_read_equals_redis_py(rstore):
    blob = bytes(range(256)) + b"\r\n$*"
    rstore.write(WriteBatch(puts={f"v|{i}": {"latest": blob + str(i).encode(), "t:1": b"", "é": b"x"}
                                  for i in range(300)}))
    for keys in (["v|7"], ["nope"], ["v|1", "nope", "v|2", "v|1"], [f"v|{i}" for i in range(0, 600, 3)]):
        got = rstore._hgetall_raw(keys)
        assert got is not None and got == pipeline_read(rstore, keys) == rstore.read(keys)
    assert rstore.read(["v|1"], fields=["latest", "zz"]) == {"v|1": {"latest": blob + b"1"}}  # HMGET path


def test_raw_read_survives_a_dropped_connection(rstore, redis_client):
    rstore.write(WriteBatch(puts={"v|1": {"f": b"1"}}))
    assert rstore.read(["v|1", "v|2"]) == {"v|1": {"f": b"1"}}
    redis_client.client_kill_filter(_type="normal", skipme=True)   # what an idle timeout or a restart does
    assert rstore.read(["v|1", "v|2"]) == {"v|1": {"f": b"1"}}
    assert rstore.read(["v|1"]) == {"v|1": {"f": b"1"}}


def test_raw_read_in_threads(rstore):
    from concurrent.futures import ThreadPoolExecutor
    rstore.write(WriteBatch(puts={f"v|{i}": {"f": str(i).encode()} for i in range(50)}))

    def work(i: int) -> bool:
        return all(rstore.read([f"v|{j}" for j in range(i, i + 20)]) ==
                   {f"v|{j}": {"f": str(j).encode()} for j in range(i, min(i + 20, 50))} for _ in range(30))
    with ThreadPoolExecutor(8) as ex:
        assert all(ex.map(work, range(40)))
