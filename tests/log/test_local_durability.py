"""Local backend only: kill -9 durability, torn-tail truncation, multi-process appends, the sparse index."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loopstack.log import TopicConfig
from loopstack.log import segments
from loopstack.log.base import partition_for
from loopstack.log.local import LocalLog
from loopstack.log.segments import HDR, IDX, frames, payload_ts, seg_path

APPENDER = str(Path(__file__).with_name("_appender.py"))
PROBE_KEY = {partition_for(f"probe-{i}", 2): f"probe-{i}" for i in range(8)}  # a key routed to each partition


def _spawn(root, name, batches=100000, size=20, pad=300):
    return subprocess.Popen([sys.executable, APPENDER, str(root), name, str(batches), str(size), str(pad)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc, out: list[str]) -> threading.Thread:
    def run():
        for line in proc.stdout:
            if line.endswith("\n"):
                out.append(line)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _all_frames_intact(root: Path, topic: str) -> int:
    """Every byte of every segment belongs to an intact frame; returns the number of frames."""
    n = 0
    for pdir in (root / topic).iterdir():
        if not pdir.is_dir():
            continue
        for seg in sorted(pdir.glob("*.seg")):
            end = 0
            for _off, pos, payload in frames(seg, 0, 0):
                end = pos + HDR.size + len(payload)
                n += 1
            assert end == seg.stat().st_size, f"{seg} has {seg.stat().st_size - end} trailing bytes"
    return n


def _index_entries_valid(root: Path, topic: str) -> int:
    """Every sparse-index entry names the offset, position and ts of a real frame; returns the number of entries."""
    n = 0
    for seg in sorted((root / topic).glob("*/*.seg")):
        idx = seg.with_suffix(".idx")
        data = idx.read_bytes() if idx.exists() else b""
        assert len(data) % IDX.size == 0, f"{idx} ends in a partial entry"
        at = {pos: (off, payload_ts(payload)) for off, pos, payload in frames(seg, 0, int(seg.stem))}
        for k in range(0, len(data), IDX.size):
            off, pos, ts = IDX.unpack_from(data, k)
            assert at.get(pos) == (off, ts), f"{idx} entry {k // IDX.size} {(off, pos, ts)} is not a frame"
            n += 1
    return n


def test_kill_minus_9_loses_no_acked_record(tmp_path):
    rng = random.Random(7)
    acked: dict[tuple[int, int], tuple[str, int]] = {}
    for round_ in range(5):
        lines: list[str] = []
        proc = _spawn(tmp_path, f"w{round_}")
        t = _collect(proc, lines)
        deadline = time.time() + 30
        while len(lines) < 40 and time.time() < deadline:  # two acked batches, then kill at a random moment
            time.sleep(0.01)
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t.join(5)
        assert len(lines) >= 40, proc.stderr.read()
        for line in lines:
            p, o, name, seq = line.split()
            key = (int(p), int(o))
            assert key not in acked, f"offset {key} acknowledged twice"
            acked[key] = (name, int(seq))
        log = LocalLog(tmp_path, segment_bytes=256 * 1024, index_interval=1024)
        ends = log.end_offsets("dur")
        for (p, o), (name, seq) in acked.items():
            assert o < ends[p]
            rec = log.read("dur", p, o, 1)[0]
            assert rec.offset == o and rec.value["w"] == name and rec.value["seq"] == seq
            assert rec.value["pad"] == "z" * 300
        # every readable record is whole, offsets are dense, and appends continue at the end
        for p in (0, 1):
            offs = [r.offset for r in log.replay("dur", from_offset={0: 0, 1: 0}) if r.partition == p]
            assert offs == list(range(ends[p]))
        # kill -9 can stop the kernel mid-write() at a page boundary, leaving a torn frame at the end of
        # *any* partition: reads skip it and that partition's next append cuts it, so probe every partition
        for p in (0, 1):
            assert log.append("dur", [{"probe": round_}], key=PROBE_KEY[p]).offsets == [(p, ends[p])]
            assert log.read("dur", p, ends[p], 1)[0].value == {"probe": round_}
        assert _all_frames_intact(tmp_path, "dur") == sum(log.end_offsets("dur").values())
        assert _index_entries_valid(tmp_path, "dur") > 0
    assert len(acked) > 100


def test_torn_index_entry_is_cut_before_the_next_append(tmp_path):
    """A write torn at a page boundary leaves part of an entry (4096 % 24 == 16); later entries must stay aligned."""
    log = LocalLog(tmp_path, index_interval=32)
    log.create_topic(TopicConfig("t", 1))
    log.append("t", [{"i": i} for i in range(200)])
    idx = seg_path(tmp_path / "t" / "0", 0, "idx")
    assert idx.stat().st_size > 4096
    with open(idx, "r+b") as f:
        f.truncate(4096)
    log2 = LocalLog(tmp_path, index_interval=32)  # the next writer process
    for b in range(5):
        log2.append("t", [{"i": 200 + b * 10 + i} for i in range(10)])
    assert _index_entries_valid(tmp_path, "t") > 170
    fresh = LocalLog(tmp_path, index_interval=32)
    assert [r.value["i"] for r in fresh.read("t", 0, 0, 1000)] == list(range(250))
    assert all(fresh.read("t", 0, o, 1)[0].value["i"] == o for o in range(250))


def test_short_writes_never_ack_a_record_that_is_not_written(tmp_path, monkeypatch):
    """os.write may write less than asked (disk full): append finishes the write or fails, and then renumbers."""
    log = LocalLog(tmp_path)
    log.create_topic(TopicConfig("t", 1))
    real_write = os.write
    with monkeypatch.context() as m:
        m.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
        assert log.append("t", [{"i": i} for i in range(5)]).offsets == [(0, i) for i in range(5)]
    assert [r.value["i"] for r in LocalLog(tmp_path).read("t", 0, 0, 10)] == list(range(5))
    first_call = iter([True])

    def disk_fills(fd, data):
        if next(first_call, False):
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "write", disk_fills)
        with pytest.raises(OSError, match="No space"):
            log.append("t", [{"i": i} for i in range(5, 10)])
    (p, o), = log.append("t", [{"after": 1}]).offsets  # whole frames of the failed call stay, unacked
    fresh = LocalLog(tmp_path)
    assert fresh.read("t", 0, o, 1)[0].value == {"after": 1} and fresh.end_offsets("t") == {0: o + 1}
    assert _all_frames_intact(tmp_path, "t") == o + 1


@pytest.mark.parametrize("garbage", ["half_frame", "bad_crc", "zeros", "header_only"])
def test_torn_tail_is_truncated_on_reopen(tmp_path, garbage):
    log = LocalLog(tmp_path)
    log.create_topic(TopicConfig("t", 1))
    log.append("t", [{"i": i} for i in range(10)])
    seg = seg_path(tmp_path / "t" / "0", 0)
    good_size = seg.stat().st_size
    whole = segments.encode_frame(123, None, '{"i":99}')
    tail = {"half_frame": whole[: len(whole) // 2],
            "bad_crc": whole[:4] + b"\x00\x00\x00\x00" + whole[8:],
            "zeros": b"\x00" * 64,
            "header_only": whole[:6]}[garbage]
    with open(seg, "ab") as f:
        f.write(tail)
    log2 = LocalLog(tmp_path)
    assert log2.end_offsets("t") == {0: 10}
    assert [r.value["i"] for r in log2.read("t", 0, 0, 100)] == list(range(10))
    res = log2.append("t", [{"i": 10}])
    assert res.offsets == [(0, 10)]
    assert seg.stat().st_size == good_size + len(segments.encode_frame(10**15, None, '{"i":10}'))
    assert [r.value["i"] for r in LocalLog(tmp_path).read("t", 0, 0, 100)] == list(range(11))
    assert _all_frames_intact(tmp_path, "t") == 11


def test_concurrent_appends_from_two_processes(tmp_path):
    LocalLog(tmp_path).create_topic(TopicConfig("dur", 2))
    outs: list[list[str]] = [[], []]
    procs = [_spawn(tmp_path, f"p{i}", batches=60, size=5, pad=20) for i in range(2)]
    threads = [_collect(p, o) for p, o in zip(procs, outs)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    for t in threads:
        t.join(5)
    offsets = [tuple(map(int, line.split()[:2])) for o in outs for line in o]
    assert len(offsets) == 600 and len(set(offsets)) == 600
    log = LocalLog(tmp_path)
    ends = log.end_offsets("dur")
    assert sum(ends.values()) == 600
    for p in (0, 1):
        assert sorted(o for q, o in offsets if q == p) == list(range(ends[p]))
    per_key: dict[str, list[int]] = {}
    for r in log.replay("dur"):
        per_key.setdefault(r.key, []).append(r.value["seq"])
    assert all(v == sorted(v) for v in per_key.values()) and len(per_key) == 10


def test_segments_roll_and_sparse_index_bounds_reads(tmp_path, monkeypatch):
    log = LocalLog(tmp_path, segment_bytes=64 * 1024, index_interval=1024)
    log.create_topic(TopicConfig("big", 1))
    for b in range(10):
        log.append("big", [{"i": b * 1000 + i} for i in range(1000)])
    segs = sorted((tmp_path / "big" / "0").glob("*.seg"))
    assert len(segs) > 5 and all(s.stat().st_size <= 64 * 1024 for s in segs)
    assert all(s.with_suffix(".idx").exists() for s in segs)
    calls = []
    real = segments.frames

    def spy(path, pos, off):
        calls.append((Path(path).name, pos, off))
        return real(path, pos, off)

    monkeypatch.setattr(segments, "frames", spy)
    fresh = LocalLog(tmp_path, segment_bytes=64 * 1024, index_interval=1024)
    fresh.end_offsets("big")
    calls.clear()
    rec = fresh.read("big", 0, 7777, 1)[0]
    assert rec.offset == 7777 and rec.value["i"] == 7777
    (name, pos, off), = calls
    assert int(name[:-4]) <= 7777 and 0 <= 7777 - off <= 1024 // 20
    calls.clear()
    ts = rec.timestamp
    assert fresh.offset_for_time("big", 0, ts) == 7000
    assert len(calls) <= 2



def test_opening_a_long_segment_costs_a_few_file_checks_not_one_per_index_entry(tmp_path, monkeypatch):
    """A new process's first append (or read) finds the active segment's end from its sparse index: the
    number of `stat` calls must not grow with the index (it once made one per entry: ~10,000 calls, 49 ms,
    for 150,000 records)."""
    log = LocalLog(tmp_path, index_interval=32)
    log.create_topic(TopicConfig("t", 1))
    for b in range(4):
        log.append("t", [{"i": b * 500 + i} for i in range(500)])
    entries = len(segments.Partition(tmp_path / "t" / "0", 1 << 30, 32).index(0))
    assert entries > 1000
    calls = []
    real = os.stat

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    fresh = LocalLog(tmp_path, index_interval=32)
    fresh.append("t", [{"i": 2000}])
    assert len(calls) < 20, calls[:30]
    monkeypatch.setattr(os, "stat", real)
    assert [r.value["i"] for r in LocalLog(tmp_path).read("t", 0, 1995, 10)] == list(range(1995, 2001))


def test_a_record_too_big_for_a_frame_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Readers stop at a frame over MAX_FRAME as at a torn one: such a record was acknowledged, then it and every
    later record of the segment were unreadable (and cut off by the next process's recovery)."""
    from loopstack.errors import LogError
    from loopstack.features.definitions import Field
    from loopstack.log import TopicConfig, open_log, partition_for, segments
    monkeypatch.setattr(segments, "MAX_FRAME", 4096)
    monkeypatch.setattr(segments, "MAX_RECORD_BYTES", 4096 - 1024, raising=False)
    log = open_log("local", path=tmp_path / "log")
    log.create_topic(TopicConfig("t", 2, (Field("i", "int64"),)))
    near = "é" * 1500                                          # 3000 bytes: still fits
    assert log.append("t", [{"i": 0, "blob": near}], key="a").accepted == 1
    for batch in ([{"i": 1}, {"i": 2, "blob": "x" * 5000}, {"i": 3}],          # an accepted record
                  [{"i": 4}, {"i": "not an int", "blob": "x" * 5000}]):        # a dead letter
        with pytest.raises(LogError, match="bytes of JSON; the local log stores records of up to 3072 bytes. "
                                           "Nothing was written"):
            log.append("t", batch, key="a")
    assert log.append("t", [{"i": 5}], key="a").accepted == 1
    fresh = open_log("local", path=tmp_path / "log")           # a new process: recovery keeps everything
    fresh.append("t", [{"i": 6}], key="a")
    part = partition_for("a", 2)
    assert [r.value["i"] for r in fresh.read("t", part)] == [0, 5, 6]
    assert fresh.read("t", part)[0].value["blob"] == near
    assert fresh.end_offsets("t.dlq") == {0: 0}
