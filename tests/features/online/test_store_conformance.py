"""One conformance suite, run against every OnlineStore backend (SQLite file, real redis-server)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loopstack.errors import ConfigError
from loopstack.features.online import open_online_store
from loopstack.features.online.base import WriteBatch

ROOT = Path(__file__).resolve().parents[3]


def batch(puts=None, deletes=None, drop=None, progress=None) -> WriteBatch:
    return WriteBatch(puts=puts or {}, deletes=deletes or {}, drop=drop or [], progress=progress or {})


def test_bytes_round_trip_and_missing_hashes(store):
    blob = bytes(range(256)) + b"\x00\n\xff"
    store.write(batch({"v|1": {"a": blob, "b": b""}, "v|s:\u00fc|x": {"latest": b"{}"}}))
    got = store.read(["v|1", "nope|1", "v|s:\u00fc|x"])
    assert got == {"v|1": {"a": blob, "b": b""}, "v|s:\u00fc|x": {"latest": b"{}"}}
    assert all(isinstance(v, bytes) for d in got.values() for v in d.values())
    assert store.read([]) == {}
    assert store.read(["nope"]) == {}
    assert store.read(["v|1"], fields=["b", "zz"]) == {"v|1": {"b": b""}}
    assert store.read(["v|1"], fields=["zz"]) == {}


def test_many_keys_in_one_read(store):
    store.write(batch({f"v|{i}": {"f": str(i).encode()} for i in range(700)}))
    keys = [f"v|{i}" for i in range(0, 1400, 2)]
    got = store.read(keys)
    assert got == {f"v|{i}": {"f": str(i).encode()} for i in range(0, 700, 2)}
    got = store.read(keys, fields=["f"] + [f"x{i}" for i in range(300)])
    assert len(got) == 350


def test_field_deletes_drops_and_order_within_a_batch(store):
    store.write(batch({"h|1": {"a": b"1", "b": b"2", "c": b"3"}, "h|2": {"a": b"x"}}))
    store.write(batch(puts={"h|1": {"c": b"new"}, "h|3": {"z": b"z"}}, deletes={"h|1": ["a", "c", "missing"]},
                      drop=["h|2", "h|none"]))
    # drop, then deletes, then puts: "c" deleted and re-put in the same batch keeps the new value
    assert store.read(["h|1", "h|2", "h|3"]) == {"h|1": {"b": b"2", "c": b"new"}, "h|3": {"z": b"z"}}
    store.write(batch(deletes={"h|3": ["z"]}))
    assert store.read(["h|3"]) == {}  # a hash without fields does not exist
    assert "h|3" not in store.scan("h|")


def test_progress_marks(store):
    assert store.progress() == {}
    store.write(batch(progress={"stream:v:t:0": "41", "stream:v:t:1": "7", "mat:v": "2024"}))
    store.write(batch({"v|1": {"f": b"1"}}, progress={"stream:v:t:0": "42"}))
    assert store.progress("stream:v:") == {"stream:v:t:0": "42", "stream:v:t:1": "7"}
    assert store.progress() == {"stream:v:t:0": "42", "stream:v:t:1": "7", "mat:v": "2024"}
    assert store.progress("nothing") == {}


def test_scan_and_clear(store):
    store.write(batch({**{f"a|{i}": {"f": b"1"} for i in range(30)}, **{f"ab|{i}": {"f": b"1"} for i in range(5)},
                       "b*|1": {"f": b"1"}, "b?|1": {"f": b"1"}},
                      progress={"a|mark": "1", "b|mark": "2"}))
    assert sorted(store.scan("a|")) == sorted(f"a|{i}" for i in range(30))
    assert len(store.scan("a")) == 35
    assert len(store.scan("a|", count=10)) == 10
    assert store.scan("b*") == ["b*|1"]  # glob characters in a prefix are literal
    assert store.scan("zz") == []
    assert store.clear("a|") == 30
    assert store.read(["a|3"]) == {} and store.read(["ab|3"]) == {"ab|3": {"f": b"1"}}
    assert store.progress() == {"b|mark": "2"}
    assert store.clear() == 7
    assert store.scan("") == [] and store.progress() == {}


def test_invalid_batch_writes_nothing(store):
    with pytest.raises(TypeError):
        store.write(batch({"h|1": {"a": b"ok"}, "h|2": {"b": "not bytes"}}, progress={"m": "1"}))
    with pytest.raises(TypeError):
        store.write(batch({"h|1": {"a": b"ok"}}, progress={"m": 1}))
    assert store.read(["h|1", "h|2"]) == {} and store.progress() == {}


def _sabotage(store, backend):
    """Make the backend fail *inside* the next write that puts field 'boom' (server side)."""
    if backend == "sqlite":
        store._con().execute("CREATE TRIGGER boom BEFORE INSERT ON kv WHEN NEW.field = 'boom' "
                             "BEGIN SELECT RAISE(ABORT, 'boom'); END")
        return Exception
    import redis
    real = store.r.pipeline

    def pipeline(*args, **kwargs):
        pipe = real(*args, **kwargs)
        hset = pipe.hset

        def bad_hset(name, *a, mapping=None, **kw):
            if mapping and "boom" in mapping:
                return pipe.execute_command("HSET", name)  # wrong arity: EXEC aborts the transaction
            return hset(name, *a, mapping=mapping, **kw)
        pipe.hset = bad_hset
        return pipe
    store.r.pipeline = pipeline
    return redis.ResponseError


def test_failing_batch_is_all_or_nothing(store, backend):
    store.write(batch({"h|0": {"a": b"before"}}, progress={"m": "0"}))
    error = _sabotage(store, backend)
    with pytest.raises(error):
        store.write(batch({"h|0": {"a": b"after"}, "h|1": {"x": b"1"}, "h|2": {"boom": b"!"}, "h|3": {"y": b"3"}},
                          deletes={"h|0": ["a"]}, progress={"m": "1"}))
    assert store.read(["h|0", "h|1", "h|2", "h|3"]) == {"h|0": {"a": b"before"}}
    assert store.progress() == {"m": "0"}
    store.write(batch({"h|1": {"x": b"1"}}, progress={"m": "2"}))  # the store still works afterwards
    assert store.read(["h|1"]) == {"h|1": {"x": b"1"}} and store.progress() == {"m": "2"}


def test_factory_errors(tmp_path):
    with pytest.raises(ConfigError, match="sqlite.*path"):
        open_online_store("sqlite")
    with pytest.raises(ConfigError, match="redis.*URL"):
        open_online_store("redis")
    with pytest.raises(ConfigError, match="unknown; use one of sqlite, redis"):
        open_online_store("cassandra", path=tmp_path)
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        open_online_store("redis", url="redis://127.0.0.1:1/0")


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "http://127.0.0.1:6379/0", "redis://127.0.0.1:abc/0",
                                 "redis://127.0.0.1:99999/0"])
def test_a_malformed_redis_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match=r"is not a Redis URL.*online\.url"):
        open_online_store("redis", url=url)


def test_an_sqlite_path_that_cannot_be_opened_is_a_config_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_a_db.db").write_bytes(b"not a database, just some bytes" * 100)
    for path in (tmp_path / "a_file" / "online.db", tmp_path, tmp_path / "not_a_db.db"):
        with pytest.raises(ConfigError, match=r"cannot open the SQLite file .*online\.path"):
            open_online_store("sqlite", path=path)


READER = textwrap.dedent("""
    import json, sys, time
    from loopstack.features.online import open_online_store
    store = open_online_store(**json.loads(sys.argv[1]))
    torn = reads = 0
    deadline = time.time() + 20
    while time.time() < deadline:
        got = (store.read if reads % 2 else store.lookup)(["pair|a", "pair|b"])   # both read paths
        if got:
            reads += 1
            a, b = got.get("pair|a", {}), got.get("pair|b", {})
            if a.get("v") != b.get("v") or len(a) != len(b):
                torn += 1
            if a.get("v") == b"done":
                break
    print(json.dumps({"torn": torn, "reads": reads}))
""")


def test_concurrent_reader_in_another_process_never_sees_half_a_batch(store, store_args):
    store.write(batch({"pair|a": {"v": b"0"}, "pair|b": {"v": b"0"}}))
    proc = subprocess.Popen([sys.executable, "-c", READER, json.dumps(store_args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    for i in range(1, 300):
        # both hashes change together; odd versions also add and drop fields
        extra = {f"x{i}": b"1"} if i % 2 else {}
        store.write(batch({"pair|a": {"v": str(i).encode(), **extra}, "pair|b": {"v": str(i).encode(), **extra}},
                          deletes={"pair|a": [f"x{i - 1}"], "pair|b": [f"x{i - 1}"]}))
    store.write(batch({"pair|a": {"v": b"done"}, "pair|b": {"v": b"done"}}))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["reads"] > 0
    assert result["torn"] == 0


def test_a_forked_child_reads_on_its_own_connection(store):
    """A child process must not share the parent's connection or socket (SQLite file locks and a Redis
    reply stream are per process): it opens its own, and both keep reading correctly."""
    import os
    store.write(batch({"fork|a": {"v": b"1"}}))
    assert store.read(["fork|a"]) == {"fork|a": {"v": b"1"}}   # the parent's per-thread connection exists
    assert store.lookup(["fork|a"]) == {"fork|a": {"v": b"1"}}
    parent = store._con() if hasattr(store, "_con") else store._raw_conn()
    pid = os.fork()
    if pid == 0:   # child: exit code 0 only if it read the value on a connection of its own
        try:
            ok = store.read(["fork|a"]) == store.lookup(["fork|a"]) == {"fork|a": {"v": b"1"}}
            mine = store._con() if hasattr(store, "_con") else store._raw_conn()
            os._exit(0 if ok and mine is not parent else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read(["fork|a"]) == {"fork|a": {"v": b"1"}}
    assert (store._con() if hasattr(store, "_con") else store._raw_conn()) is parent


def test_sqlite_serving_reads_map_the_file_and_batch_reads_do_not(tmp_path):
    """`lookup` (the online read path) reads through a memory-mapped connection; `read` (batch jobs) and
    writes through a plain one, so a job scanning a big store does not count the file in its RSS."""
    from loopstack.features.online.sqlite import SQLiteOnlineStore
    store, unmapped = SQLiteOnlineStore(tmp_path / "a.db"), SQLiteOnlineStore(tmp_path / "b.db", mmap=0)
    try:
        store.write(batch({"m|1": {"v": b"x" * 5000, "w": b"1"}}))
        assert store.lookup(["m|1", "m|2"]) == store.read(["m|1", "m|2"]) == {"m|1": {"v": b"x" * 5000, "w": b"1"}}
        assert store._con(mapped=True).execute("PRAGMA mmap_size").fetchone()[0] > 1 << 28
        assert store._con().execute("PRAGMA mmap_size").fetchone()[0] == 0
        store.write(batch({"m|1": {"v": b"y"}}))   # a write on the plain connection is seen by the next lookup
        assert store.lookup(["m|1"]) == {"m|1": {"v": b"y", "w": b"1"}}
        unmapped.write(batch({"m|1": {"v": b"z"}}))
        assert unmapped.lookup(["m|1"]) == {"m|1": {"v": b"z"}}
        assert unmapped._con().execute("PRAGMA mmap_size").fetchone()[0] == 0
    finally:
        store.close()
        unmapped.close()
