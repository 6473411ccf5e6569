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


def test_lone_surrogates_are_stored_and_read_back_on_every_backend(log):
    """A broken JSON escape ("\\ud83d" without its pair) gives Python a str with no UTF-8 form: appending it
    crashed with UnicodeEncodeError (in the key hash, the frame, the Redis/Kafka client)."""
    log.create_topic(TopicConfig("s", 3, (Field("user", "string"), Field("n", "int64")), key_field="user"))
    recs = [{"user": "\ud83d", "n": 1}, {"user": "a", "n": 2, "note": "x\udc00y"}, {"user": "b", "n": "\ud800"}]
    res = log.append("s", recs)
    assert (res.accepted, res.rejected) == (2, 1)
    got = sorted((r.value for r in log.replay("s")), key=lambda v: v["n"])
    assert got == [{"user": "\ud83d", "n": 1}, {"user": "a", "n": 2, "note": "x\udc00y"}]
    assert [r.key for r in log.replay("s") if r.value["n"] == 1] == ["\ud83d"]
    dead = [r.value for r in log.replay("s.dlq")]
    assert [d["record"] for d in dead] == [{"user": "b", "n": "\ud800"}]


def test_ingest_of_a_jsonl_line_with_a_broken_surrogate_escape(local, tmp_path):
    from loopstack.log.ingest import ingest_file
    local.create_topic(TopicConfig("s", 2, (Field("user", "string"),), key_field="user"))
    f = tmp_path / "x.jsonl"
    f.write_text('{"user": "a"}\n{"user": "\\ud83d"}\n{"user": "c"}\n')
    res = ingest_file(local, f, "s", progress=False)
    assert (res.accepted, res.rejected) == (3, 0)
    assert sorted(r.value["user"] for r in local.replay("s")) == sorted(["a", "\ud83d", "c"])


def test_aware_datetime_with_no_utc_form_is_a_dead_letter_not_a_crash(local):
    """0001-01-01 00:00 at +05:00 is in year 0 in UTC: the timestamp field rejects it with a reason, and the
    dead letter (and such a datetime in a field outside the schema) keeps it in its own offset."""
    from datetime import datetime, timedelta, timezone
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    local.create_topic(TopicConfig("t", 1, (Field("at", "timestamp"),)))
    res = local.append("t", [{"at": early}, {"at": 10 ** 30}, {"at": "2024-01-01", "seen": early}])
    assert (res.accepted, res.rejected) == (1, 2)
    assert res.reasons == {"field 'at': timestamp out of range: its UTC time must fall in the years 1..9999": 2}
    assert local.read("t", 0)[0].value == {"at": "2024-01-01T00:00:00.000000+00:00",
                                           "seen": "0001-01-01T00:00:00+05:00"}
    assert [d.value["record"]["at"] for d in local.read("t.dlq", 0)] == ["0001-01-01T00:00:00+05:00", 10 ** 30]


def test_commits_and_seeks_past_the_end_or_not_whole_numbers_are_refused(log):
    """Committing 1_000_000 on a 5-record partition was stored: the group then silently skipped the next
    999_995 records appended. '5' / NaN raised TypeError/ValueError; 1.5 was stored as 1."""
    log.create_topic(TopicConfig("o", 1))
    log.append("o", [{"i": i} for i in range(5)])
    c = log.consumer("o", "g")
    for bad, match in [(1_000_000, "ends at offset 5.*commit( to)? at most 5"), (6, "ends at offset 5"),
                       ("5", "whole numbers >= 0"), (float("nan"), "whole numbers >= 0"), (1.5, "whole numbers"),
                       (-1, ">= 0")]:
        with pytest.raises(LogError, match=match):
            log.commit_offsets("o", "g", {0: bad})
        with pytest.raises(LogError, match=match.replace("commit", "seek")):
            c.seek(0, bad)
        with pytest.raises(LogError, match=match):
            c.commit({0: bad})
    assert log.committed("o", "g") == {} and c.position() == {0: 0}
    log.commit_offsets("o", "g", {0: 5})   # the end itself: 'read from the next record on'
    c.seek(0, 5)
    log.append("o", [{"i": 5}])
    assert [r.value["i"] for r in c.poll(10)] == [5]
    assert [r.value["i"] for r in log.consumer("o", "g").poll(10)] == [5]
    with pytest.raises(LogError, match="partition True does not exist"):
        log.read("o", True)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [None, 5, "hello", b'{"i": 1}'])
def test_append_of_something_that_is_not_records_is_refused(local, data):
    """None / 5 raised TypeError; a str was split into one dead letter per character."""
    local.create_topic(TopicConfig("t", 1))
    with pytest.raises(LogError, match="append takes records: a list of dicts, one dict or a DataFrame"):
        local.append("t", data)
    assert local.end_offsets("t") == {0: 0} and local.end_offsets("t.dlq") == {0: 0}


def test_append_key_forms(local):
    """An int key routes like its string (as a key_field int does); a float or bytes key is refused."""
    from loopstack.log import partition_for
    local.create_topic(TopicConfig("t", 4))
    res = local.append("t", [{"i": 1}, {"i": 2}], key=7)
    assert res.offsets == [(partition_for("7", 4), 0), (partition_for("7", 4), 1)]
    assert [r.key for r in local.read("t", partition_for("7", 4))] == ["7", "7"]
    for key in (1.5, b"k"):
        with pytest.raises(LogError, match="key must be a string, an int, one key per record"):
            local.append("t", [{"i": 3}], key=key)  # type: ignore[arg-type]


def test_replay_and_archive_refuse_batch_sizes_below_one(local, tmp_path):
    """replay(batch=0) ended at once with nothing; archive_topic(chunk_rows=0 or -5) never returned."""
    from loopstack.log.archive import archive_topic
    local.create_topic(TopicConfig("t", 1))
    local.append("t", [{"i": i} for i in range(3)])
    for batch in (0, -1, 2.5):
        with pytest.raises(LogError, match="batch must be a whole number >= 1"):
            list(local.replay("t", batch=batch))
    with pytest.raises(LogError, match="from_offset must be an offset"):
        list(local.replay("t", from_offset="1"))  # type: ignore[arg-type]
    assert [r.value["i"] for r in local.replay("t", from_offset=1, batch=1)] == [1, 2]
    for rows in (0, -5):
        with pytest.raises(LogError, match="chunk_rows must be a whole number >= 1"):
            archive_topic(local, "t", tmp_path / "lake", chunk_rows=rows)
    assert archive_topic(local, "t", tmp_path / "lake", chunk_rows=2).rows == 3


def test_a_user_topic_cannot_take_a_dead_letter_topic_name(local):
    """TopicConfig('e.dlq', 1, schema) replaced e's dead-letter config (ingest's dead letters were then checked
    against that schema), and creating 'e' afterwards silently erased the user's schema again."""
    local.create_topic(TopicConfig("e", 2, (Field("x", "int64"),)))
    with pytest.raises(LogError, match="'e.dlq' is reserved.*e.g. 'e-dlq'"):
        local.create_topic(TopicConfig("e.dlq", 1, (Field("x", "int64"),)))
    with pytest.raises(LogError, match="is reserved"):
        local.create_topic(TopicConfig("other.dlq", 3))
    assert local.topic("e.dlq") == TopicConfig("e.dlq", 1)
    assert local.create_topic(TopicConfig("e.dlq", 1)) == TopicConfig("e.dlq", 1)  # its own config: a no-op
    assert local.append("e", [{"x": "no"}]).rejected == 1
    assert local.read("e.dlq", 0)[0].value["reason"].startswith("field 'x'")


def test_lone_surrogates_are_archived_as_their_escape_text(local, tmp_path):
    """The log keeps a lone surrogate as given; the lake's Parquet text is UTF-8, which has no form for it:
    archiving such a record crashed the whole run (UnicodeEncodeError). It is archived as its escape text."""
    import pyarrow.parquet as pq

    from loopstack.log.archive import archive_topic
    local.create_topic(TopicConfig("s", 1, (Field("user", "string"),)))
    local.append("s", [{"user": "a"}, {"user": "x\ud83dy", "extra": {"k": "\udc00"}}])
    local.create_topic(TopicConfig("free", 1))
    local.append("free", [{"user": "b"}, {"user": "\ud800"}])
    archive_topic(local, "s", tmp_path / "lake")
    archive_topic(local, "free", tmp_path / "lake")
    for topic, want in (("s", ["a", "x\\ud83dy"]), ("free", ["b", "\\ud800"])):
        files = sorted((tmp_path / "lake" / topic).rglob("*.parquet"))
        got = [u for f in files for u in pq.read_table(f).column("user").to_pylist()]
        assert sorted(got) == sorted(want), topic
