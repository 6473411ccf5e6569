"""Choosing the offline engine by configuration, and a project switching from DuckDB to Spark on the same lake."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from loopstack.config import parse_config
from loopstack.errors import ConfigError
from loopstack.features.offline import open_engine
from loopstack.features.offline.duckdb import DuckDBEngine
from loopstack.features.offline.spark import SparkEngine
from loopstack.project import Project
from tests.features.stream._defs import gen_events, make_project


def test_offline_section_selects_spark_with_master_and_conf():
    cfg = parse_config({"offline": {"engine": "spark", "spark_master": "spark://10.0.0.5:7077",
                                    "spark_conf": {"spark.executor.memory": "8g", "spark.executor.instances": 4}}},
                       env={})
    assert cfg.offline.spark_conf == {"spark.executor.memory": "8g", "spark.executor.instances": "4"}
    eng = open_engine(cfg.offline)
    assert isinstance(eng, SparkEngine) and eng.master == "spark://10.0.0.5:7077"
    assert eng.conf == {"spark.executor.memory": "8g", "spark.executor.instances": "4"}
    assert parse_config({}, env={}).offline.spark_master == "local[2]"
    assert isinstance(open_engine(parse_config({}, env={}).offline), DuckDBEngine)


def test_spark_conf_from_the_environment_and_bad_values():
    cfg = parse_config({}, env={"LOOPSTACK_OFFLINE__ENGINE": "spark",
                                "LOOPSTACK_OFFLINE__SPARK_CONF": '{"spark.sql.shuffle.partitions": 64}'})
    assert cfg.offline.engine == "spark" and cfg.offline.spark_conf == {"spark.sql.shuffle.partitions": "64"}
    with pytest.raises(ConfigError, match=r"offline.engine = 'flink' is not allowed; choose one of: duckdb, spark"):
        parse_config({"offline": {"engine": "flink"}}, env={})
    with pytest.raises(ConfigError, match=r"offline.spark_conf = .* must be a mapping"):
        parse_config({"offline": {"spark_conf": "[1, 2]"}}, env={})


def test_engine_never_stops_a_session_it_did_not_start(spark):
    eng = SparkEngine(spark)
    eng.close()
    assert spark.range(3).count() == 3  # still alive
    eng = SparkEngine()  # finds the running session instead of starting one
    assert eng.spark is spark
    eng.close()
    assert spark.range(2).count() == 2


def test_project_switches_engine_by_config_on_the_same_lake(tmp_path, spark):
    """Log topic archived to the lake (order_by = append time, partition, offset): both engines, same frame."""
    duck = make_project(tmp_path / "proj")
    base = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    events = gen_events(300, seed=11, base=base)
    duck.log.append("events", events)
    times = sorted({e["ts"] for e in events})
    entity = pd.DataFrame({"author_id": [a % 8 for a in range(40)],  # author 7 has no events
                           "event_timestamp": [times[(i * 37) % len(times)] + timedelta(microseconds=i % 2)
                                               for i in range(40)]})
    refs = [f"{v}:{f.name}" for v in ("wins", "plain") for f in duck.registry.views()[v].features]
    want = duck.get_historical_features(entity, refs)
    cfg = dataclasses.replace(duck.config, offline=dataclasses.replace(duck.config.offline, engine="spark"))
    duck.close()
    with Project(duck.root, config=cfg) as sp:
        assert sp.engine.name == "spark"
        got = sp.get_historical_features(entity, refs)
    assert list(got.columns) == list(want.columns) and list(got.dtypes) == list(want.dtypes)
    floats = [c for c in want.columns if c.startswith(("sum_amt", "mean"))]
    pd.testing.assert_frame_equal(got.drop(columns=floats), want.drop(columns=floats))
    pd.testing.assert_frame_equal(got[floats], want[floats], check_exact=False, rtol=1e-12)
    assert want["cnt_2h"].sum() > 0 and want["last_label"].notna().sum() > 5  # not a vacuous comparison


def test_large_data_paths_give_the_same_answer(tmp_path, spark, monkeypatch):
    """The paths big data takes -- a shuffle by key instead of one partition, a broadcast semi-join on
    the rows' keys instead of an IN list, a broadcast file map instead of a CASE -- forced on small data."""
    import pyarrow as pa

    import loopstack.features.offline.spark as spark_engine
    import loopstack.features.offline.spark_sql as spark_sql
    from loopstack.features.definitions import Count, Entity, EventSource, FeatureView, Last, Mean, Sum
    from loopstack.features.offline.base import SourceData, ViewRequest
    from tests.features.test_pit_properties import BASE
    monkeypatch.setattr(spark_engine, "_ONE_PARTITION_ROWS", 0)
    monkeypatch.setattr(spark_engine, "_ISIN_MAX_KEYS", 0)
    monkeypatch.setattr(spark_sql, "_CASE_MAX_FILES", 0)
    import numpy as np
    import pyarrow.parquet as pq
    rng = np.random.default_rng(5)
    for i in range(3):  # equal timestamps across files: the file order decides
        n = 400
        pq.write_table(pa.table({"k": rng.integers(0, 30, n), "ts": pa.array(BASE + rng.integers(0, 50, n) * 1000,
                                                                              pa.timestamp("us", tz="UTC")),
                                 "x": rng.integers(-5, 5, n), "y": rng.normal(size=n)}), tmp_path / f"p{i}.parquet")
    src = EventSource("s", "ts", [], path=str(tmp_path) + "/")
    view = FeatureView("v", entity=Entity("e", "k"), source=src, ttl="20ms", features=[
        Last("x", name="last_x"), Last("y", filter="x > 0", name="last_y_pos"), Count(window="10ms", name="n"),
        Sum("x", window="30ms", name="sx"), Mean("y", window="10ms", name="my"), Last("x", window="5ms", name="lx")])
    entity = pa.table({"k": rng.integers(0, 33, 300), "event_timestamp": pa.array(
        BASE + rng.integers(0, 52, 300) * 1000 + rng.integers(0, 2, 300), pa.timestamp("us", tz="UTC"))})
    req = ViewRequest(view, tuple((f, f.name) for f in view.features), SourceData("s", (str(tmp_path),), "ts"))
    want = DuckDBEngine(threads=2).historical_features(entity, "event_timestamp", [req])
    eng = SparkEngine(spark)
    got = eng.historical_features(entity, "event_timestamp", [req])
    plan = eng.last_query._jdf.queryExecution().executedPlan().toString()
    assert "Exchange hashpartitioning(__k" in plan and "BroadcastHashJoin" in plan
    assert got.schema == want.schema
    for name in got.column_names:
        if name == "my":
            a, b = (np.array(t[name].to_pylist(), dtype=float) for t in (got, want))
            assert np.allclose(a, b, rtol=1e-12, equal_nan=True)
        else:
            assert got[name].to_pylist() == want[name].to_pylist(), name
    assert sum(v is not None for v in want["last_y_pos"].to_pylist()) > 50


def test_spark_reader_slices_give_the_duckdb_readers_order(tmp_path, spark):
    """Materialization's reader on Spark, cut into many time slices, streams exactly what DuckDB's does."""
    import pyarrow as pa

    from loopstack.features.materialize import _Reader
    from loopstack.features.offline.spark_reader import SparkReader
    p = make_project(tmp_path / "proj")
    p.log.append("events", gen_events(400, seed=12))
    view = p.registry.views()["wins"]
    duck = _Reader(p, view)
    spans = [(0, 2**62)]
    want = pa.Table.from_batches(list(duck.batches(spans, 64)))
    duck.close()
    sp = SparkReader(p, view, slice_rows=50)  # 400 events: about 8 slices
    got = pa.Table.from_batches(list(sp.batches(spans, 64)))
    assert sp.n_order == duck.n_order == 3 and got.num_rows == want.num_rows == 400
    assert sp.count(spans) == 400 and sp.earliest() == min(want["__ts"].to_pylist())
    for c in want.column_names:
        assert got[c].to_pylist() == want[c].to_pylist(), c
    p.close()
