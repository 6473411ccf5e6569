"""Box 1, the event log: partitioned, append-only topics with consumer groups and dead letters.

``open_log("local", path=...)`` is the embedded default (segment files, fsync on ack);
``open_log("redis", url=...)`` uses Redis Streams; ``open_log("kafka", url="kafka://host:port")`` uses
Kafka topics. All implement `EventLog`.
"""
from __future__ import annotations

from pathlib import Path

from loopstack.errors import LogError

from .base import DLQ_SUFFIX, AppendResult, Consumer, EventLog, Record, TopicConfig, partition_for

BACKENDS = ("local", "redis", "kafka")


def open_log(backend: str, *, path: Path | str | None = None, url: str | None = None,
             **options: object) -> EventLog:
    """An event log: ``"local"`` needs `path` (a folder), ``"redis"`` needs `url` (redis://host:port/db),
    ``"kafka"`` needs `url` (kafka://host:port[,host:port], the bootstrap servers)."""
    if backend == "local":
        if path is None:
            raise LogError("the local event log needs path= (a folder for its segment files), "
                           "e.g. open_log('local', path='.loopstack/log')")
        from .local import LocalLog
        return LocalLog(Path(path), **options)  # type: ignore[arg-type]
    if backend == "redis":
        if url is None:
            raise LogError("the redis event log needs url=, e.g. open_log('redis', url='redis://127.0.0.1:6379/0')")
        from .redis import RedisLog
        return RedisLog(url, **options)  # type: ignore[arg-type]
    if backend == "kafka":
        if url is None:
            raise LogError("the kafka event log needs url=, e.g. open_log('kafka', url='kafka://127.0.0.1:9092')")
        from .kafka import KafkaLog
        return KafkaLog(url, **options)  # type: ignore[arg-type]
    raise LogError(f"unknown event log backend {backend!r}; allowed backends: {', '.join(BACKENDS)}")


__all__ = ["open_log", "EventLog", "Consumer", "Record", "AppendResult", "TopicConfig", "partition_for",
           "DLQ_SUFFIX", "BACKENDS", "LogError"]
