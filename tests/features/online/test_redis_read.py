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


# -- polling for the reply (`_recv`) -----------------------------------------------------------------
def _pair(timeout: float | None):
    import socket
    a, b = socket.socketpair()
    b.settimeout(timeout)
    return a, b


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "with-timeout"])
def test_recv_polls_for_a_reply_that_comes_within_the_spin(timeout, monkeypatch):
    """A reply arriving during the spin is read by polling (the blocking recv is never called), on a
    blocking socket and on one with a timeout (redis-py's default, whose recv would poll(2) first)."""
    import socket
    import threading

    from loopstack.features.online import redis as R
    a, b = _pair(timeout)
    blocking = []
    real_recv = socket.socket.recv

    class Watched(socket.socket):   # `_recv` polls only plain sockets: this one is checked by identity below
        def recv(self, n, flags=0):   # noqa: ANN001, ANN202
            if not flags:
                blocking.append(n)
            return real_recv(self, n, flags)

    w = Watched(fileno=b.detach())
    w.settimeout(timeout)
    monkeypatch.setattr(R.socket, "socket", Watched)   # so that `type(sock) is socket.socket` holds for `w`
    threading.Timer(0.005, a.sendall, (b"+OK\r\n",)).start()
    assert R._recv(w, spin_s=2.0) == b"+OK\r\n"
    assert blocking == []
    a.close()
    w.close()


def test_recv_falls_back_to_a_blocking_read_after_the_spin():
    import threading
    import time

    from loopstack.features.online import redis as R
    a, b = _pair(None)
    threading.Timer(0.05, a.sendall, (b"late",)).start()
    t0 = time.perf_counter()
    assert R._recv(b, spin_s=0.001) == b"late"    # spun 1 ms, then slept until the bytes came
    assert time.perf_counter() - t0 >= 0.04
    a.close()
    b.close()


def test_recv_keeps_the_socket_timeout():
    import socket
    import time

    from loopstack.features.online import redis as R
    a, b = _pair(0.05)
    t0 = time.perf_counter()
    with pytest.raises(socket.timeout):
        R._recv(b, spin_s=0.01)     # nothing comes: the spin ends, then the socket's own timeout applies
    assert 0.05 <= time.perf_counter() - t0 < 2
    a.close()
    b.close()


def test_spin_setting(redis_url):
    from loopstack.config import Config
    from loopstack.errors import ConfigError
    from loopstack.features.online.redis import SPIN_US
    assert open_online_store("redis", url=redis_url)._spin_s == SPIN_US / 1e6 == Config().online.spin_us / 1e6
    assert open_online_store("redis", url=redis_url, spin_us=0)._spin_s == 0
    with pytest.raises(ConfigError, match="online.spin_us"):
        open_online_store("redis", url=redis_url, spin_us=-1)
