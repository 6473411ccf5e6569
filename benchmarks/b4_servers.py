"""B4 servers: how to start, probe, load and stop each server under test (loopstack, BentoML, Ray Serve),
the request bodies each one takes, and how its batch-size counters are read.

Every server is started as a subprocess pinned to core 1 (`taskset -c 1`, inherited by its children),
bound to 127.0.0.1, with one worker/replica and single-threaded BLAS/OpenMP; it is stopped by
signalling the processes it started (found by pid: the process and its descendants), never by name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import b4_models  # noqa: E402

BENCH = REPO / ".bench"
WORK = BENCH / "b4"
VENVS = {"bentoml": BENCH / "bentoml", "ray": BENCH / "ray"}
PEER_PKGS = {"bentoml": ["bentoml==1.4.40"], "ray": ["ray[serve]==2.60.0"]}
# the same scikit-learn/LightGBM/numpy everywhere, so every server unpickles the same model files
MODEL_PKGS = ["scikit-learn==1.9.1", "lightgbm==4.7.0", "numpy==2.4.6"]
SERVER_CORE, CLIENT_CORE = "1", "0"
SERVERS = ("loopstack", "bentoml", "ray")
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def venv_python(server: str) -> Path:
    return Path(sys.executable) if server == "loopstack" else VENVS[server] / "bin" / "python"


def ensure_venv(server: str) -> None:
    """Create the peer's virtualenv (pinned versions; the log goes to .bench/<server>_install.log)."""
    if server == "loopstack" or venv_python(server).exists():
        return
    log = BENCH / f"{server}_install.log"
    print(f"creating {VENVS[server]} (log: {log})", flush=True)
    with open(log, "w") as f:
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(VENVS[server])],
                       check=True, stdout=f, stderr=subprocess.STDOUT)
        subprocess.run([str(VENVS[server] / "bin" / "pip"), "install", *PEER_PKGS[server], *MODEL_PKGS],
                       check=True, stdout=f, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ loopstack project -----------
def loopstack_name(model: str) -> str:
    return f"b4_{model}"


def make_loopstack_project(root: Path) -> dict:
    """A fresh loopstack project at `root` with both B4 models registered and promoted to production.

    The signature's inputs are raw request fields (names without ':' that are no on-demand feature), so
    the server builds each vector from the request's "fields" and never touches the online store.
    """
    from loopstack.project import Project
    if root.exists():
        shutil.rmtree(root)
    project = Project.init(root, name="b4", example=False)
    sig = {"inputs": [{"ref": f, "version": None, "dtype": "float64"} for f in b4_models.FEATURES],
           "outputs": [{"name": "score", "dtype": "float64"}]}
    out = {}
    try:
        for m in b4_models.MODELS:
            name = loopstack_name(m)
            mv = project.models.register(name, b4_models.load(m), signature=sig,
                                         description=f"B4 benchmark {m} ({b4_models.path(m).name})")
            project.models.promote(f"models:/{name}/{mv.version}", "production", reason="B4 benchmark model",
                                   override=True)
            out[name] = mv.version
    finally:
        project.close()
    return out


# ------------------------------------------------------------------ request bodies ---------------
# loopstack's :predict_batch body: "instances" (an object of named fields per row) or "rows" (the column
# names once, then a list of values per row, as the peers' {"x": [[...]]}); set by --loopstack-form.
LOOPSTACK_FORM = "instances"


def bodies(server: str, model: str, rows_per_request: int, n: int = 256) -> Path:
    """A JSON-lines file of `n` request bodies of `rows_per_request` rows each, in `server`'s format."""
    X = b4_models.rows()
    form = LOOPSTACK_FORM if server == "loopstack" and rows_per_request > 1 else ""
    path = WORK / "bodies" / f"{server}_{rows_per_request}{'_' + form if form == 'rows' else ''}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rows = [X[(i * rows_per_request + j) % len(X)] for j in range(rows_per_request)]
        if form == "rows":
            body = {"columns": list(b4_models.FEATURES), "rows": [[float(v) for v in r] for r in rows]}
        elif server == "loopstack":
            inst = [{"fields": {f: float(v) for f, v in zip(b4_models.FEATURES, r)}} for r in rows]
            body = inst[0] if rows_per_request == 1 else {"instances": inst}
        else:
            body = {"x": [[float(v) for v in r] for r in rows]}
        lines.append(json.dumps(body, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")
    return path


def predict_path(server: str, model: str, rows_per_request: int) -> str:
    if server == "loopstack":
        return f"/v1/models/{loopstack_name(model)}:" + ("predict" if rows_per_request == 1 else "predict_batch")
    return "/predict"


def stats_url(server: str, port: int) -> str:
    return f"http://127.0.0.1:{port}" + ("/stats" if server == "ray" else "/metrics")


def _series_total(text: str, name: str, want: str) -> float | None:
    """The sum of Prometheus series `name` whose labels contain `want` (None: no such series)."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})?\s+(\S+)", line)
        if m and want in (m.group(1) or ""):
            total += float(m.group(2))
            found = True
    return total if found else None


def batch_counts(server: str, model: str, text: str | None) -> tuple[float, float] | None:
    """(batches, requests) from a stats snapshot: the Prometheus batch-size histogram (loopstack,
    BentoML) or Ray's /stats JSON; None when unavailable."""
    if not text or text.startswith("ERROR"):
        return None
    if server == "ray":
        d = json.loads(text)
        return float(d["batches"]), float(d["requests"])
    metric = "loopstack_serving_batch_size" if server == "loopstack" else "bentoml_service_adaptive_batch_size"
    want = f'model="{loopstack_name(model)}"' if server == "loopstack" else ""
    count, total = _series_total(text, metric + "_count", want), _series_total(text, metric + "_sum", want)
    return None if count is None and total is None else (count or 0.0, total or 0.0)


def model_seconds(model: str, text: str | None) -> float | None:
    """loopstack's loopstack_serving_model_seconds_total for `model` (all versions), None when absent."""
    if not text or text.startswith("ERROR"):
        return None
    return _series_total(text, "loopstack_serving_model_seconds_total", f'model="{loopstack_name(model)}"')


def mean_batch(server: str, batching: bool, a: tuple[float, float] | None, b: tuple[float, float] | None,
               ) -> float | None:
    """Mean requests (rows, for BentoML) per model call between two `batch_counts` snapshots."""
    if a is None or b is None:
        return 1.0 if (server == "bentoml" and not batching) else None  # BentoML counts only batchable APIs
    batches, reqs = b[0] - a[0], b[1] - a[1]
    return reqs / batches if batches > 0 else None


class WrongAnswer(RuntimeError):
    """A server answered something else than the model's in-process score for the same row."""


def check_answer(server: str, model: str, answer) -> None:
    """`answer` (the response to the first 1-row body) must be the positive-class score of row 0."""
    got = answer["prediction"] if server == "loopstack" else answer[0]
    b4_models.quiet()
    want = b4_models.score(b4_models.load(model), b4_models.rows()[:1])[0]
    if not isinstance(got, (int, float)) or abs(got - want) > 1e-9 * max(1.0, abs(want)):
        raise WrongAnswer(f"{server} answered {answer!r} for row 0 of {model}; in-process score is {want!r}")


# ------------------------------------------------------------------ processes --------------------
@dataclass
class Settings:
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    # BentoML's max_latency_ms is a latency budget past which its dispatcher sheds requests (503), not a
    # wait: it gets loopstack's default request deadline (requests older than that fail there too)
    bentoml_max_latency_ms: float = 2000.0
    loopstack_args: tuple[str, ...] = ()


def command(server: str, model: str, batching: bool, port: int, s: Settings, project: Path) -> tuple[list, dict]:
    env = {**os.environ, **THREAD_ENV, "PYTHONPATH": str(HERE), "B4_MODEL": model,
           "B4_BATCH": "on" if batching else "off", "B4_MAX_BATCH": str(s.max_batch_size),
           "B4_MAX_LATENCY_MS": str(s.max_latency_ms), "PYTHONUNBUFFERED": "1"}
    pin = ["taskset", "-c", SERVER_CORE]
    if server == "loopstack":
        batch = s.max_batch_size if batching else 1
        cmd = [str(venv_python(server)), "-m", "loopstack", "serve", "--project", str(project),
               "--model", loopstack_name(model), "--host", "127.0.0.1", "--port", str(port),
               "--max-batch-size", str(batch), "--max-latency-ms", str(s.max_latency_ms),
               "--cache-entries", "0", "--no-access-log", *s.loopstack_args]
    elif server == "bentoml":
        env.update(BENTOML_HOME=str(WORK / "bentoml_home"), BENTOML_DO_NOT_TRACK="True",
                   B4_MAX_LATENCY_MS=str(s.bentoml_max_latency_ms))
        cmd = [str(VENVS["bentoml"] / "bin" / "bentoml"), "serve", "b4_bentoml_service:B4Model",
               "--host", "127.0.0.1", "--port", str(port)]
    else:
        env.update(RAY_USAGE_STATS_ENABLED="0")
        cmd = [str(venv_python(server)), str(HERE / "b4_ray_serve.py"), "--port", str(port),
               "--temp-dir", "/tmp/ray_b4"]
    return pin + cmd, env


class Server:
    """One running server under test; `stop()` ends it and everything it started."""

    def __init__(self, server: str, model: str, batching: bool, s: Settings, project: Path) -> None:
        self.server, self.model, self.batching = server, model, batching
        self.port = free_port()
        cmd, env = command(server, model, batching, self.port, s, project)
        self.log = WORK / "logs" / f"{server}_{model}_{'on' if batching else 'off'}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(HERE), stdout=self._f, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pids: set[int] = {self.proc.pid}

    def _track(self) -> None:
        try:
            self.pids |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.Error:
            pass

    def wait_ready(self, body: bytes, path: str, timeout: float = 180.0) -> float:
        """Poll until a prediction succeeds (the model is loaded and routed); seconds it took. The answer
        must equal the in-process score of the same row (every server computes the same thing)."""
        t0 = time.monotonic()
        url = f"http://127.0.0.1:{self.port}{path}"
        last = ""
        while time.monotonic() - t0 < timeout:
            self._track()
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited with {self.proc.returncode}; see {self.log}")
            try:
                req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        self._track()
                        check_answer(self.server, self.model, json.loads(r.read()))
                        return time.monotonic() - t0
            except WrongAnswer:
                raise
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"{self.server} not ready after {timeout:.0f}s ({last}); see {self.log}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (all of them: proxies, controllers, workers)."""
        self._track()
        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far per thread name (the OS name, /proc/<pid>/task/<tid>/comm; loopstack names its
        batcher, prediction-log and model-watcher threads), summed over the server's processes."""
        self._track()
        out: dict[str, float] = {}
        for pid in self.pids:
            try:
                for t in psutil.Process(pid).threads():
                    try:
                        name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
                    except OSError:
                        name = "?"
                    out[name] = out.get(name, 0.0) + t.user_time + t.system_time
            except psutil.Error:
                pass
        return out

    def stop(self, grace: float = 20.0) -> None:
        self._track()
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        for pid in sorted(self.pids):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._f.close()


def run_client(server: Server, rows_per_request: int, concurrency: int, seconds: float, warmup: float,
               stats: bool = True) -> dict:
    """The closed-loop client (b4_client.py), pinned to the client core; its JSON result."""
    b = bodies(server.server, server.model, rows_per_request)
    cmd = ["taskset", "-c", CLIENT_CORE, sys.executable, str(HERE / "b4_client.py"), "--port", str(server.port),
           "--path", predict_path(server.server, server.model, rows_per_request), "--bodies", str(b),
           "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup-seconds", str(warmup)]
    if stats:
        cmd += ["--stats-url", stats_url(server.server, server.port)]
    cpu0, t0, th0 = server.cpu_seconds(), time.monotonic(), server.thread_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["server_cpu_seconds"] = server.cpu_seconds() - cpu0   # the whole client run: warm-up + window + drain
    th1 = server.thread_cpu()
    res["server_thread_cpu_seconds"] = {k: v - th0.get(k, 0.0) for k, v in th1.items() if v - th0.get(k, 0.0) > 0}
    res["server_cpu_cores"] = res["server_cpu_seconds"] / (time.monotonic() - t0)
    before, after = res.pop("stats_before"), res.pop("stats_after")
    a, b = batch_counts(server.server, server.model, before), batch_counts(server.server, server.model, after)
    res["mean_batch"] = mean_batch(server.server, server.batching, a, b)
    if server.server == "loopstack":   # the model's own time per batch inside the server, over the window
        ma, mb = model_seconds(server.model, before), model_seconds(server.model, after)
        if None not in (a, b, ma, mb) and b[0] > a[0]:
            res["model_ms_per_batch"] = (mb - ma) * 1e3 / (b[0] - a[0])
    return res


def first_body(server: str, model: str, rows_per_request: int = 1) -> bytes:
    return bodies(server, model, rows_per_request).read_text().splitlines()[0].encode()
