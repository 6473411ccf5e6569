"""Sorted source indexes: reused while the files are unchanged, rebuilt when they change, never read
half-built, and giving the same answers as the ASOF path (the property test covers random data)."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack.features.definitions import Entity, EventSource, FeatureView, Last
from loopstack.features.offline.base import SourceData, ViewRequest
from loopstack.features.offline.duckdb import DuckDBEngine
from loopstack.features.offline.sorted_index import gather

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
USER = Entity("user", "user_id")


def view(ttl=None) -> FeatureView:
    src = EventSource("clicks", "ts", [], path="unused/")
    return FeatureView("u", entity=USER, source=src, features=[Last("x", name="x"), Last("s", name="s")], ttl=ttl)


def write(path, users, seconds, xs, ss) -> None:
    pq.write_table(pa.table({"user_id": pa.array(users, pa.int64()),
                             "ts": pa.array([T0 + timedelta(seconds=s) for s in seconds], pa.timestamp("us", "UTC")),
                             "x": pa.array(xs, pa.float64()), "s": pa.array(ss, pa.string())}), path)


def ask(engine, v, folder, users, seconds) -> pa.Table:
    ent = pa.table({"user_id": pa.array(users, pa.int64()),
                    "event_timestamp": pa.array([T0 + timedelta(seconds=s) for s in seconds],
                                                pa.timestamp("us", "UTC"))})
    req = ViewRequest(v, tuple((f, f.name) for f in v.features), SourceData("clicks", (str(folder),), "ts"))
    return engine.historical_features(ent, "event_timestamp", [req])


@pytest.fixture()
def indexed(tmp_path):
    eng = DuckDBEngine(threads=2, index_dir=str(tmp_path / "index"), index="always")
    yield eng
    eng.close()


def test_index_is_built_once_reused_and_rebuilt_when_the_files_change(tmp_path, indexed):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "p0.parquet", [1, 1, 2], [0, 10, 5], [1.0, 2.0, None], ["a", "b", "c"])
    v = view()
    out = ask(indexed, v, data, [1, 1, 2, 3], [10, 11, 6, 99])
    assert out["x"].to_pylist() == [1.0, 2.0, None, None]  # strictly before; a null value is the latest value
    assert out["s"].to_pylist() == ["a", "b", "c", None]
    assert indexed.indexes.built == 1
    ask(indexed, v, data, [1], [11])
    assert indexed.indexes.built == 1  # unchanged files: the index is reused
    # a new file arrives (mtime/size change the fingerprint): the answer includes it
    write(data / "p1.parquet", [1], [10.5], [7.0], ["z"])
    out = ask(indexed, v, data, [1, 1], [10, 11])
    assert out["x"].to_pylist() == [1.0, 7.0]
    assert indexed.indexes.built == 2
    assert len([p for p in (tmp_path / "index").iterdir() if not p.name.startswith(".")]) == 1  # old one pruned


def test_a_half_built_index_is_never_read(tmp_path, indexed):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "p0.parquet", [1], [0], [1.0], ["a"])
    ask(indexed, view(), data, [1], [1])
    (folder,) = [p for p in (tmp_path / "index").iterdir()]
    (folder / "manifest.json").unlink()  # as if the process died before the manifest was written
    fresh = DuckDBEngine(index_dir=str(tmp_path / "index"), index="always")
    assert ask(fresh, view(), data, [1], [1])["x"].to_pylist() == [1.0]
    assert fresh.indexes.built == 1


def test_ttl_and_same_answers_as_the_asof_path(tmp_path, indexed):
    rng = np.random.default_rng(7)
    data = tmp_path / "data"
    data.mkdir()
    n = 2000
    users = rng.integers(0, 50, n).tolist()
    secs = (rng.integers(0, 5000, n) * 2).tolist()  # ties on (user, ts) happen: later file row wins
    xs = [None if rng.random() < 0.1 else float(v) for v in rng.normal(size=n)]
    write(data / "p0.parquet", users[:1000], secs[:1000], xs[:1000], [str(u) for u in users[:1000]])
    write(data / "p1.parquet", users[1000:], secs[1000:], xs[1000:], [str(u) for u in users[1000:]])
    q_users = rng.integers(0, 60, 500).tolist()
    q_secs = (rng.integers(0, 5000, 500) * 2 + 1).tolist()
    for ttl in (None, "100s"):
        plain = DuckDBEngine(threads=2)
        want = ask(plain, view(ttl), data, q_users, q_secs)
        got = ask(indexed, view(ttl), data, q_users, q_secs)
        assert got.equals(want)
    assert indexed.indexes.built == 1


def test_auto_indexes_only_big_sources(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "p0.parquet", [1, 2, 3], [0, 1, 2], [1.0, 2.0, 3.0], ["a", "b", "c"])
    small = DuckDBEngine(index_dir=str(tmp_path / "i1"), index="auto", index_min_rows=4)
    ask(small, view(), data, [1], [5])
    assert small.indexes.built == 0
    big = DuckDBEngine(index_dir=str(tmp_path / "i2"), index="auto", index_min_rows=3)
    ask(big, view(), data, [1], [5])
    assert big.indexes.built == 1
    with pytest.raises(ValueError, match="index='sometimes'"):
        DuckDBEngine(index="sometimes")


def test_gather_keeps_nulls_offsets_and_types():
    col = pa.array([1, None, 3, 4, None, 6], pa.int32()).slice(1)  # an offset into the buffers
    idx = np.array([0, 1, 4, 2, 0])
    found = np.array([True, True, True, True, False])
    assert gather(col, idx, found).to_pylist() == [None, 3, 6, 4, None]
    ts = pa.array([T0, None], pa.timestamp("us", "UTC"))
    assert gather(ts, np.array([1, 0]), np.array([True, True])).to_pylist() == [None, T0]
    strings = pa.array(["a", None, "c"])
    assert gather(strings, np.array([2, 1, 0]), np.array([True, True, False])).to_pylist() == ["c", None, None]


def test_project_config_wires_the_index(tmp_path, monkeypatch):
    from loopstack import Project
    monkeypatch.setenv("LOOPSTACK_OFFLINE__INDEX", "always")
    project = Project.init(tmp_path / "p", example=False)
    eng = project.engine
    assert eng.index == "always" and eng.indexes is not None
    assert os.path.realpath(eng.indexes.root) == os.path.realpath(tmp_path / "p" / "data" / "index")
    monkeypatch.setenv("LOOPSTACK_OFFLINE__INDEX", "never")
    assert Project(tmp_path / "p").engine.indexes is None
