"""Bad or unusual input to the event log: a clear LogError (or a dead letter with a reason), never a
traceback, a silently mis-handled value or a lost record."""
from __future__ import annotations

import pytest

from loopstack.errors import LogError
from loopstack.features.definitions import Field
from loopstack.log import TopicConfig, open_log


@pytest.fixture
def local(tmp_path):
    """A LocalLog: the checks under test are shared by every backend (validate.py / checks.py)."""
    lg = open_log("local", path=tmp_path / "log")
    yield lg
    lg.close()


@pytest.mark.parametrize("partitions", [0, -3, 2.0, float("nan"), "3", True, None])
def test_partition_count_must_be_a_whole_number_at_least_one(local, partitions):
    with pytest.raises(LogError, match="partitions must be a whole number >= 1"):
        local.create_topic(TopicConfig("t", partitions))
    assert local.topics() == []


@pytest.mark.parametrize("field", ["retention_ms", "retention_bytes"])
@pytest.mark.parametrize("value", [-1, 0, float("nan"), 1.5, "1d", True])
def test_retention_must_be_positive_or_none(local, field, value):
    with pytest.raises(LogError, match=f"{field} must be a whole number .* or None to keep records forever"):
        local.create_topic(TopicConfig("t", 1, **{field: value}))
    assert local.topics() == []


def test_negative_retention_never_reaches_the_data(local):
    """Kafka's -1 means 'forever'; here it used to put the cutoff in the future and delete every closed segment."""
    local.create_topic(TopicConfig("t", 1))
    local.append("t", [{"i": i} for i in range(10)])
    with pytest.raises(LogError, match="retention_ms"):
        local.create_topic(TopicConfig("t", 1, retention_ms=-1))
    assert local.topic("t").retention_ms is None
    assert local.apply_retention("t") == 0 and len(local.read("t", 0)) == 10


def test_schema_with_a_field_twice_or_a_non_field_is_refused(local):
    with pytest.raises(LogError, match="field 'x' appears twice"):
        local.create_topic(TopicConfig("t", 1, (Field("x", "int64"), Field("x", "string"))))
    with pytest.raises(LogError, match=r"schema entries must be Field\(name, dtype\)"):
        local.create_topic(TopicConfig("t", 1, ({"name": "x", "dtype": "int64"},)))  # type: ignore[arg-type]
    assert local.topics() == []
