"""Offline engines (box 3): point-in-time retrieval over the Parquet lake, chosen by `offline.engine`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from loopstack.errors import ConfigError
from loopstack.features.offline.base import OfflineEngine

if TYPE_CHECKING:
    from loopstack.config import OfflineConfig

ENGINES = ("duckdb", "spark")


def open_engine(cfg: "OfflineConfig", index_dir: str | None = None) -> OfflineEngine:
    """The engine `cfg.engine` names: DuckDB (embedded, with sorted indexes under `index_dir`) or Spark
    (`cfg.spark_master`, `cfg.spark_conf`; an already running SparkSession is reused)."""
    if cfg.engine == "duckdb":
        from loopstack.features.offline.duckdb import DuckDBEngine
        return DuckDBEngine(threads=cfg.threads, memory_limit=cfg.memory_limit, index_dir=index_dir,
                            index=cfg.index, index_min_rows=cfg.index_min_rows)
    if cfg.engine == "spark":
        try:
            import pyspark  # noqa: F401
        except ImportError:
            raise ConfigError("offline.engine = spark needs PySpark: pip install pyspark (and a Java 17+ runtime)") \
                from None
        from loopstack.features.offline.spark import SparkEngine
        return SparkEngine(master=cfg.spark_master, conf=cfg.spark_conf)
    raise ConfigError(f"offline.engine = {cfg.engine!r} is not known; choose one of: {', '.join(ENGINES)}")
