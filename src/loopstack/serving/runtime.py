"""Runtimes own a loaded model and run batches on it: in-process (`ThreadRuntime`) or in a supervised
worker process (`ProcessRuntime`).

A runtime is built from a *loader* (a picklable callable returning ``(model, signature)``, e.g.
`RegistryLoader`, which verifies the artifact's sha256) and a *scorer* ``(model, signature, rows) ->
results``. The process runtime talks to its worker over a pipe; a supervisor thread restarts the
worker when it dies (with backoff), and a batch in flight when it dies fails at once with
`WorkerDied` instead of hanging, so the breaker and the degradation ladder can take over.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection as mpc
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from loopstack.serving.errors import ServingError

log = logging.getLogger("loopstack.serving")

Scorer = Callable[[Any, Any, Sequence[Any]], list]


class ModelLoadError(ServingError):
    """A model version could not be loaded (bad artifact, failed sha256 check, import error)."""


class WorkerDied(ServingError):
    """The model worker process died or is restarting; the batch did not run."""


class ModelError(ServingError):
    """The model raised while scoring a batch."""


@dataclass(frozen=True)
class RegistryLoader:
    """Loads `ref` from the registry of the project at `root` (sha256-checked); picklable for workers."""
    root: str
    ref: str

    def __call__(self) -> tuple[Any, Any]:
        from loopstack.project import Project
        project = Project(self.root)
        try:
            return project.models.load(self.ref), project.models.get(self.ref).signature
        finally:
            project.close()


def default_scorer(model: Any, signature: Any, rows: Sequence[Any]) -> list:
    """Score vectors in signature order with the training code path (see serving/vector.py)."""
    from loopstack.serving.vector import score_rows
    return score_rows(model, signature, rows)


class ThreadRuntime:
    """The model lives in this process; batches run on the caller's (the batcher's) thread."""

    kind = "thread"

    def __init__(self, loader: Callable[[], tuple[Any, Any]], scorer: Scorer = default_scorer, name: str = "") -> None:
        self.loader, self.scorer, self.name = loader, scorer, name
        self.model: Any = None
        self.signature: Any = None
        self.restarts = 0

    def start(self) -> None:
        try:
            self.model, self.signature = self.loader()
        except Exception as exc:  # noqa: BLE001 - any load failure refuses the version
            raise ModelLoadError(f"loading {self.name}: {type(exc).__name__}: {exc}") from exc

    def run_batch(self, rows: list) -> list:
        try:
            return list(self.scorer(self.model, self.signature, rows))
        except Exception as exc:  # noqa: BLE001 - reported per request
            raise ModelError(f"model {self.name} failed on a batch of {len(rows)}: {type(exc).__name__}: {exc}") \
                from exc

    @property
    def alive(self) -> bool:
        return self.model is not None

    def stats(self) -> dict:
        return {"kind": self.kind, "alive": self.alive, "restarts": 0, "pid": None}

    def close(self) -> None:
        self.model = None


def _worker_main(conn: Any, loader: Callable, scorer: Scorer) -> None:
    """The worker process: load, say ready (or why not), then score batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when we stop (graceful drain)
    try:
        model, signature = loader()
    except BaseException as exc:  # noqa: BLE001
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", multiprocessing.current_process().pid, signature))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        try:
            conn.send(("ok", list(scorer(model, signature, msg[1]))))
        except Exception as exc:  # noqa: BLE001 - the parent fails the batch, the worker lives on
            conn.send(("err", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)))


class ProcessRuntime:
    """The model lives in a worker process (spawned); a supervisor restarts it when it dies."""

    kind = "process"

    def __init__(self, loader: Callable[[], tuple[Any, Any]], scorer: Scorer = default_scorer, name: str = "",
                 load_timeout_s: float = 120.0, batch_timeout_s: float = 30.0, max_backoff_s: float = 5.0) -> None:
        self.loader, self.scorer, self.name = loader, scorer, name
        self.load_timeout_s, self.batch_timeout_s, self.max_backoff_s = load_timeout_s, batch_timeout_s, max_backoff_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._batch_lock = threading.Lock()    # one batch at a time on the pipe
        self._state = threading.Condition()
        self._closing = False
        self.signature: Any = None
        self.restarts = 0
        self.pid: int | None = None
        self._supervisor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.loader, self.scorer),
                                 name=f"loopstack-model-{self.name}", daemon=True)
        proc.start()
        child.close()
        deadline = time.monotonic() + self.load_timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ModelLoadError(f"worker of {self.name} did not load the model within "
                                         f"{self.load_timeout_s:g}s")
                ready = mpc.wait([parent, proc.sentinel], timeout=min(left, 1.0))
                if parent in ready:
                    try:
                        msg = parent.recv()
                    except (EOFError, OSError):
                        raise ModelLoadError(f"worker of {self.name} exited while loading the model") from None
                    if msg[0] == "error":
                        raise ModelLoadError(f"loading {self.name}: {msg[1]}")
                    break
                if proc.sentinel in ready:
                    raise ModelLoadError(f"worker of {self.name} exited with code {proc.exitcode} while loading "
                                         "the model")
        except BaseException:
            _kill(proc)
            parent.close()
            raise
        with self._state:
            if self._closing:   # closed while this worker was starting: do not leave it running
                _kill(proc)
                parent.close()
                raise ModelLoadError(f"runtime of {self.name} was closed while its worker started")
            self._proc, self._conn, self.pid, self.signature = proc, parent, msg[1], msg[2]
            self._state.notify_all()

    def start(self) -> None:
        """Start the worker and wait until it has loaded the model (ModelLoadError if it cannot)."""
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name=f"supervisor-{self.name}", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        backoff = 0.1
        while not self._closing:
            proc = self._proc
            if proc is not None and proc.is_alive():
                mpc.wait([proc.sentinel], timeout=0.5)
                continue
            if self._closing:
                return
            log.warning("model worker of %s died (exit code %s); restarting", self.name,
                        None if proc is None else proc.exitcode)
            with self._batch_lock, self._state:   # a batch on the dead worker returns at once (sentinel)
                self._proc = None
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            try:
                self._spawn()
                self.restarts += 1
                backoff = 0.1
                log.warning("model worker of %s restarted (pid %s)", self.name, self.pid)
            except ModelLoadError as exc:
                log.error("restarting the model worker of %s failed: %s; retrying in %.1fs", self.name, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    # -- running -----------------------------------------------------------------------------
    def run_batch(self, rows: list) -> list:
        """Score `rows` in the worker; WorkerDied at once if it is dead, dies or hangs meanwhile."""
        with self._batch_lock:
            with self._state:
                proc, conn = self._proc, self._conn
            if proc is None or conn is None or not proc.is_alive():
                raise WorkerDied(f"the model worker of {self.name} is restarting; the batch was not run")
            try:
                conn.send(("run", rows))
            except (OSError, ValueError) as exc:
                raise WorkerDied(f"the model worker of {self.name} is gone ({exc})") from exc
            ready = mpc.wait([conn, proc.sentinel], timeout=self.batch_timeout_s)
            if conn in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError) as exc:
                    raise WorkerDied(f"the model worker of {self.name} died during a batch") from exc
                if msg[0] == "ok":
                    return msg[1]
                raise ModelError(f"model {self.name} failed on a batch of {len(rows)}: {msg[1]}")
            if not ready:   # hung: kill it, the supervisor starts a fresh one
                _kill(proc)
                raise WorkerDied(f"the model worker of {self.name} took more than {self.batch_timeout_s:g}s on "
                                 "a batch; it was killed and is being restarted")
            raise WorkerDied(f"the model worker of {self.name} died during a batch (exit code {proc.exitcode}); "
                             "it is being restarted")

    @property
    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.is_alive()

    def stats(self) -> dict:
        return {"kind": self.kind, "alive": self.alive, "restarts": self.restarts, "pid": self.pid}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (politely, then by force) and the supervisor."""
        with self._state:
            self._closing = True
        with self._batch_lock, self._state:
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
        if conn is not None:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if proc is not None:
            proc.join(timeout)
            _kill(proc)
        if conn is not None:
            conn.close()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout)


def _kill(proc: Any) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)


def make_runtime(kind: str, loader: Callable, scorer: Scorer = default_scorer, name: str = "",
                 **options: Any) -> ThreadRuntime | ProcessRuntime:
    """A runtime of `kind` ("thread" | "process")."""
    if kind == "process":
        return ProcessRuntime(loader, scorer, name, **options)
    return ThreadRuntime(loader, scorer, name)
