"""Offline-engine fixtures: every offline suite runs against DuckDB and Spark (one SparkSession per
test session -- starting the JVM costs seconds)."""
from __future__ import annotations

import os

import pytest

# the conf the Spark engine is tested with: 2 local cores, loopback only, UTC
SPARK_TEST_CONF = {
    "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false", "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.session.timeZone": "UTC", "spark.driver.memory": "2g", "spark.sql.adaptive.enabled": "false",
}


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by every test that uses the Spark engine."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from loopstack.features.offline.spark_sql import spark_session
    session = spark_session("local[2]", SPARK_TEST_CONF)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module", params=["duckdb", "spark"])
def offline_engine(request):
    """The offline engine under test: DuckDB (embedded default) or Spark on the shared local session."""
    if request.param == "duckdb":
        from loopstack.features.offline.duckdb import DuckDBEngine
        eng = DuckDBEngine(threads=2)
    else:
        from loopstack.features.offline.spark import SparkEngine
        eng = SparkEngine(request.getfixturevalue("spark"))
    yield eng
    eng.close()
