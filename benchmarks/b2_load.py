"""B2's online stores: where each system's store lives, loading them, warming the page cache, and
running one step (load or reads) in a fresh process with its peak RSS polled.

Imported by b2_online_reads.py (the runs and the main); split out so neither file grows past ~400 lines.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b1_pit_join as b1  # noqa: E402  (console, results folder, Feast venv, RSS polling)
from b2_report import BACKENDS  # noqa: E402
from quiet import wait_quiet  # noqa: E402

REPO, RESULTS, FEAST_PY = b1.REPO, b1.RESULTS, b1.FEAST_PY
WORK = b1.BENCH / "b2"
SYSTEMS = ("loopstack", "feast")
WARM_CHUNK = 16 << 20  # warm_page_cache reads in 16 MiB chunks
console = b1.console
FEAST_MARK = "b2:feast-materialized:n{n}"  # set in Feast's db after its redis load finished


# ---------------------------------------------------------------- environment -----------------
def ensure_feast_redis() -> None:
    """Feast's redis online store needs the redis client in Feast's venv (feast[redis])."""
    ok = subprocess.run([str(FEAST_PY), "-c", "import redis"], capture_output=True).returncode == 0
    if not ok:
        console.print("installing the redis client into the Feast virtualenv (feast[redis] extra)")
        subprocess.run([str(b1.FEAST_VENV / "bin" / "pip"), "install", "-q", "redis>=4.2.2,<8", "hiredis>=2,<4"],
                       check=True)


@contextlib.contextmanager
def redis(url: str | None) -> Iterator[str]:
    """The given redis URL, or a fresh redis-server on loopback (tests/servers.py) for the block."""
    if url:
        yield url
        return
    sys.path.insert(0, str(REPO / "tests"))
    from servers import redis_server
    with redis_server() as u:
        yield u


def _redis_db(url: str, db: int) -> str:
    base = url.rsplit("/", 1)[0] if url.count("/") >= 3 else url
    return f"{base}/{db}"


def _feast_conn(url: str, db: int) -> str:
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    return f"{hostport},db={db}"


def store_files(system: str, backend: str, n: int) -> list[Path]:
    """The SQLite online-store file(s) a system reads from (with WAL and shm), [] for Redis."""
    if backend != "sqlite":
        return []
    if system == "feast":
        db = WORK / f"n{n}" / "feast-sqlite" / "data" / "online.db"   # b2_feast.write_repo
    else:
        from loopstack.config import load_config, resolve
        root = WORK / f"n{n}" / "loopstack"
        db = resolve(root, load_config(root, env={}).online.path)
    if not db.exists():
        raise SystemExit(f"{system}'s SQLite online store {db} is missing: the load step of this script "
                         f"creates it (did it fail? see {RESULTS / 'logs'}/b2_load_{system}_sqlite_n{n}.*)")
    return [f for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if f.exists()]


def warm_page_cache(system: str, backend: str, n: int) -> dict:
    """Read the system's SQLite store file(s) once through the OS and discard the bytes, so the page
    cache holds them: every timed run starts from the same state whatever ran before (B2 docs)."""
    files, total, t0 = store_files(system, backend, n), 0, time.perf_counter()
    buf = bytearray(WARM_CHUNK)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while k := fh.readinto(buf):
                total += k
    return {"files": [f.name for f in files], "bytes": total, "seconds": round(time.perf_counter() - t0, 3)}


def _dirty_kib() -> int:
    """Dirty + under-writeback page-cache KiB (/proc/meminfo): file data the kernel has yet to write."""
    try:
        info = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
        return int(info["Dirty"].split()[0]) + int(info["Writeback"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0


def settle(url: str | None, backend: str, timeout: float = 600) -> dict:
    """Wait out the background work a load (or the previous run) leaves behind, before a timed run:
    Redis's AOF rewrite or RDB save (a fork writing a ~0.7 GB file), the kernel's writeback of dirty
    pages (flushed ~30 s after they were written, whatever runs then) and the VM's reporting of freed
    memory to its host (quiet.py). Each one stalls a timed run it overlaps, and after a load that run
    was always the first system's first repeat (B2 docs)."""
    t0, waited = time.perf_counter(), 0.0
    if backend == "redis" and url:
        import redis as redis_client
        r = redis_client.Redis.from_url(url)
        busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
        while any(int(r.info("persistence").get(k, 0)) for k in busy):
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"Redis at {url} still rewrites its AOF after {timeout:.0f} s")
            time.sleep(0.5)
        waited = time.perf_counter() - t0
    dirty, t1 = _dirty_kib(), time.perf_counter()
    os.sync()
    synced = time.perf_counter() - t1
    return {"redis_wait_seconds": round(waited, 2), "dirty_kib": dirty, "sync_seconds": round(synced, 2),
            "memory_report": wait_quiet()}


# ---------------------------------------------------------------- subprocesses and loading ----
def run_json(cmd: list[str], stem: str, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run one step in a fresh process; peak tree RSS polled (b1's helper); last JSON line parsed."""
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_f, err_f = logs / f"b2_{stem}.out", logs / f"b2_{stem}.err"
    with open(out_f, "w") as fo, open(err_f, "w") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, start_new_session=True, cwd=str(REPO),
                                env={**os.environ, **(env or {})})
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, b1._tree_rss(ps))
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"status": "timeout", "timeout_seconds": timeout}
            time.sleep(0.2)
    lines = [ln for ln in out_f.read_text().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in err_f.read_text(errors="replace").splitlines() if ln.strip()][-6:]
        return {"status": "error", "returncode": proc.returncode, "error": "\n".join(tail)}
    res = json.loads(lines[-1])
    res.update(status="ok", process_wall_seconds=time.perf_counter() - t0, peak_rss_polled_bytes=peak)
    return res


def loopstack_env(backend: str, url: str) -> dict:
    """Environment selecting loopstack's online store (redis db 0)."""
    return {"LOOPSTACK_ONLINE__BACKEND": backend, "LOOPSTACK_ONLINE__URL": _redis_db(url, 0)}


def feast_args(backend: str, url: str, n: int) -> list[str]:
    """b2_feast.py arguments for the Feast repo of this backend and size (redis db 1)."""
    repo = WORK / f"n{n}" / f"feast-{backend}"
    args = ["--repo", str(repo), "--online", backend]
    return args + (["--redis", _feast_conn(url, 1)] if backend == "redis" else [])


def _earlier_load(stem: str) -> dict | None:
    """The result an earlier load of this store printed (its log), if it loaded rows."""
    f = RESULTS / "logs" / f"b2_{stem}.out"
    lines = [ln for ln in f.read_text().splitlines() if ln.startswith("{")] if f.exists() else []
    if not lines:
        return None
    r = json.loads(lines[-1])
    return dict(r, status="ok") if r.get("plain", {}).get("rows") else None


def load_all(n: int, data: Path, url: str, results: dict, backends: tuple[str, ...] = BACKENDS,
             systems: tuple[str, ...] = SYSTEMS) -> None:
    """Load every store that is not loaded yet (loopstack's materialize is idempotent: a re-run is a no-op)."""
    import redis as redis_client
    loads = results.setdefault("loads", {})
    for system in ("loopstack", "feast"):
        for backend in BACKENDS:
            k, prev = f"{system}|{backend}|{n}", _earlier_load(f"load_{system}_{backend}_n{n}")
            if prev and k not in loads:
                loads[k] = prev
    for backend in backends:
        k = f"loopstack|{backend}|{n}"
        if "loopstack" in systems:
            console.print(f"loading loopstack {backend} ({n:,} entities; materialize)")
            r = run_json([sys.executable, str(HERE / "b2_loopstack.py"), "load", "--project",
                          str(WORK / f"n{n}" / "loopstack"), "--data", str(data)], f"load_loopstack_{backend}_n{n}",
                         loopstack_env(backend, url))
            if r["status"] != "ok":
                raise SystemExit(f"loopstack load ({backend}) failed:\n{r.get('error')}")
            if r["plain"]["rows"] or k not in loads:
                loads[k] = r
        if "feast" not in systems:
            continue
        k = f"feast|{backend}|{n}"
        repo = WORK / f"n{n}" / f"feast-{backend}"
        if backend == "sqlite":
            loaded = (repo / "data" / "online.db").exists() and loads.get(k, {}).get("status") == "ok"
        else:
            loaded = bool(redis_client.Redis.from_url(_redis_db(url, 1)).exists(FEAST_MARK.format(n=n)))
        if loaded:
            continue
        console.print(f"loading Feast {backend} ({n:,} entities; feast materialize)")
        if repo.exists():
            shutil.rmtree(repo)
        r = run_json([str(FEAST_PY), str(HERE / "b2_feast.py"), "load", "--data", str(data)]
                     + feast_args(backend, url, n), f"load_feast_{backend}_n{n}")
        if r["status"] != "ok":
            raise SystemExit(f"Feast load ({backend}) failed:\n{r.get('error')}")
        loads[k] = r
        if backend == "redis":
            redis_client.Redis.from_url(_redis_db(url, 1)).set(FEAST_MARK.format(n=n), "1")
