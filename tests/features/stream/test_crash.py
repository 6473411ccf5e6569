"""Crash safety: kill -9 a materialization at random points, and kill a stream consumer between
applying a batch and committing it; the re-run must give exactly the clean run's state."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from loopstack.features.materialize import materialize
from loopstack.timeutil import to_us
from loopstack.features.stream import CRASH_ENV, StreamProcessor
from loopstack.project import Project
from tests.features.stream._defs import assert_same_served, dump_state, gen_events, make_project, served

REPO = Path(__file__).resolve().parents[3]


def child(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, "-m", "tests.features.stream._worker", *args], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def online_env(backend: str, tmp: Path, redis_url: str | None, name: str) -> dict[str, str]:
    if backend == "redis":
        return {"LOOPSTACK_ONLINE__BACKEND": "redis", "LOOPSTACK_ONLINE__URL": redis_url,
                "LOOPSTACK_ONLINE__PREFIX": f"{name}{uuid.uuid4().hex[:8]}"}
    return {"LOOPSTACK_ONLINE__BACKEND": "sqlite", "LOOPSTACK_ONLINE__PATH": str(tmp / f"{name}.db")}


def open_with(root: Path, env: dict[str, str]) -> Project:
    from loopstack.config import load_config
    return Project(root, config=load_config(root, env={**os.environ, **env}))


@pytest.mark.slow
@pytest.mark.parametrize("path", ["bulk", "events"])
def test_materialize_killed_at_random_points_resumes_to_the_clean_state(tmp_path, path):
    p = make_project(tmp_path / "proj")
    events = gen_events(1500, seed=11, authors=60)   # the bulk path writes batches of whole entities
    p.log.append("events", events)
    start, end = to_us("2000-01-01"), to_us(max(e["ts"] for e in events) + timedelta(microseconds=1))
    clean_env = online_env("sqlite", tmp_path, None, "clean")
    clean = open_with(p.root, clean_env)
    materialize(clean, start, end, chunk_rows=40, progress=False, bulk=path == "bulk")
    want = dump_state(clean)
    assert len(want) >= 100  # 60 authors x 2 views (+ meta)

    env = online_env("sqlite", tmp_path, None, "killed")
    rng = random.Random(5)
    kills = 0
    for _attempt in range(6):
        proc = child(["materialize", str(p.root), str(start), str(end), "40", path], env)
        target = rng.randint(1, 12)
        seen = 0
        for line in proc.stdout:
            if line.startswith("applied"):
                seen += 1
                if seen >= target:
                    if rng.random() < 0.5:  # sometimes mid-write of the next chunk
                        import time
                        time.sleep(rng.uniform(0.0, 0.03))
                    proc.send_signal(signal.SIGKILL)
                    break
            if line.startswith("done"):
                break
        rc = proc.wait(timeout=120)
        if rc == -signal.SIGKILL:
            kills += 1
        else:
            assert rc == 0, proc.stderr.read()
            break
    assert kills >= 2
    final = child(["materialize", str(p.root), str(start), str(end), "40", path], env)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    got = dump_state(open_with(p.root, env))
    diff = {(h, f): (want[h].get(f), got.get(h, {}).get(f)) for h in want for f in want[h]
            if want[h].get(f) != got.get(h, {}).get(f)}
    assert set(got) == set(want) and not diff, list(diff.items())[:3]  # every hash, every field, byte for byte
    clean.close()
    p.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_stream_killed_between_apply_and_commit_neither_loses_nor_double_counts(tmp_path, backend, request):
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    p = make_project(tmp_path / "proj", partitions=3)
    events = gen_events(600, seed=12)
    p.log.append("events", events)
    env = online_env(backend, tmp_path, url, "killed")
    crash = child(["stream", str(p.root), "100"], {**env, CRASH_ENV: "2"})
    _, err = crash.communicate(timeout=120)
    assert crash.returncode == 17, err  # died after its 2nd apply, before committing it
    killed = open_with(p.root, env)
    marks = killed.online_store.progress("stream:wins:")
    committed = killed.log.committed("events", "loopstack-stream")
    applied_through = {int(k.rsplit(":", 1)[1]): int(v) + 1 for k, v in marks.items()}
    assert sum(applied_through.values()) > sum(committed.values())  # the state is ahead of the commit
    rerun = child(["stream", str(p.root), "100"], env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err

    clean_env = online_env(backend, tmp_path, url, "clean")
    clean = open_with(p.root, clean_env)
    with StreamProcessor(clean, group="clean") as sp:
        while sp.step(1000):
            pass
    newest = max(e["ts"] for e in events)
    times = [to_us(newest) + 1, to_us(newest + timedelta(minutes=50))]
    killed = open_with(p.root, env)
    assert_same_served(served(killed, times), served(clean, times))
    # exact count: every event once in the 2h windows right after the newest event
    resp = killed.online.get_online_features(["wins:cnt_2h"], [{"author_id": a} for a in range(7)], as_of=times[0])
    in_window = sum(1 for e in events if to_us(e["ts"]) >= times[0] - 2 * 3_600_000_000)
    assert sum(r["cnt_2h"] for r in resp.rows) == in_window
    ends = {p: o for p, o in killed.log.end_offsets("events").items() if o}
    assert killed.log.committed("events", "loopstack-stream") == ends
    for q in (killed, clean, p):
        q.close()
