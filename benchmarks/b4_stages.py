"""B4 side measurement: where a :predict_batch request's time goes inside `loopstack serve`, stage by stage.

Runs `loopstack serve` (pinned to the server core, as b4_overhead.py) under a wrapper that stamps each
request (time.perf_counter_ns) as it passes the stages of the block path: bytes in, body parsed by
llhttp, the fast lane's start, the body checked (`fast_predict_batch`), the block routed and its vectors
built, handed to the batcher, the model call, the result handed back to the event loop, the answer built,
the response written (the send(2) itself apart), and the prediction-log records built after it. The
closed-loop client (b4_client.py, concurrency 1, pinned to the client core) drives it; medians and 90th
percentiles per stage are printed, with the gap from the end of one request's work to the next request's
first bytes (at concurrency 1, work left after the answer delays the next request once that gap is used).

The stamps cost a few microseconds each: this tells where the time goes, b4_overhead.py measures how much.

    python benchmarks/b4_stages.py                       # MLP, 32-row `instances` bodies, 12 s
    python benchmarks/b4_stages.py --model lgbm --form rows --seconds 20
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import b4_servers as S

HERE = Path(__file__).resolve().parent
STAGES = ("recv", "parsed", "begin", "checked", "routed", "vectors", "submit", "model0", "model1", "handed",
          "resume", "write0", "sent", "write1", "records0", "records1")

WRAPPER = r'''
import atexit, json, sys, time
from loopstack import fast_http
from loopstack.serving import app as A, batcher as B, block as BL, http_layer as H, prediction_log as PL
from loopstack.serving import vector as V
T, cur, ns = [], {}, time.perf_counter_ns
def at(name, f, after=False):
    def w(*a, **k):
        if not after:
            cur[name] = ns()
        r = f(*a, **k)
        if after:
            cur[name] = ns()
        return r
    return w
P = fast_http.FastLaneProtocol
_dr = P.data_received
def data_received(self, data):
    global cur
    if "recv" not in cur or "write1" in cur:
        cur = {"recv": ns()}
        T.append(cur)
    return _dr(self, data)
P.data_received = data_received
P.on_message_complete = at("parsed", P.on_message_complete)
H.ServingAccess.begin = at("begin", H.ServingAccess.begin)
A.fast_predict_batch = at("checked", A.fast_predict_batch, after=True)
A.fast_predict_rows = at("checked", A.fast_predict_rows, after=True)
BL.route = at("routed", BL.route, after=True)
V.VectorBuilder.plain_fields = at("vectors", V.VectorBuilder.plain_fields, after=True)
V.VectorBuilder.plain_rows = at("vectors", V.VectorBuilder.plain_rows, after=True)
B.DynamicBatcher.submit_block = at("submit", B.DynamicBatcher.submit_block)
B.DynamicBatcher._call = at("model1", at("model0", B.DynamicBatcher._call), after=True)
B._deliver = at("handed", B._deliver)
A.block_body = at("resume", A.block_body)
_send = P._send
def send(self, out, keep_alive, close=True):
    cur["write0"] = ns()
    t = self.transport
    class Stamped:   # the transport's write(2), timed apart from the code around it
        def __getattr__(s, k): return getattr(t, k)
        def write(s, data): t.write(data); cur["sent"] = ns()
    self.transport = Stamped()
    try:
        _send(self, out, keep_alive, close)
    finally:
        self.transport = t
    cur["write1"] = ns()
P._send = send
PL.PredictionLog._queue_deferred = at("records1", at("records0", PL.PredictionLog._queue_deferred), after=True)
OUT = sys.argv[1]
atexit.register(lambda: json.dump(T, open(OUT, "w")))
from loopstack.cli import main
sys.argv = ["loopstack"] + sys.argv[2:]
main()
'''


def pct(vals: list[float], q: float) -> float:
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(len(vals) * q))]


def report(trace: list[dict], skip: int) -> list[str]:
    """The per-stage table: each stage from the stamp before it, over requests that passed every stage."""
    done = [t for t in trace if all(k in t for k in STAGES)][skip:]
    lines = [f"{len(done)} requests", f"{'stage':<24}{'p50 µs':>10}{'p90 µs':>10}"]
    for a, b in zip(STAGES, STAGES[1:]):
        d = [(t[b] - t[a]) / 1e3 for t in done]
        lines.append(f"{a + ' -> ' + b:<24}{pct(d, .5):>10.1f}{pct(d, .9):>10.1f}")
    total = [(t["write0"] - t["recv"]) / 1e3 for t in done]
    lines.append(f"{'recv -> write0 (all)':<24}{pct(total, .5):>10.1f}{pct(total, .9):>10.1f}")
    gap = [(n["recv"] - t["records1"]) / 1e3 for t, n in zip(done, done[1:])]
    lines.append(f"{'records1 -> next recv':<24}{pct(gap, .5):>10.1f}{pct(gap, .9):>10.1f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", choices=("mlp", "lgbm"))
    p.add_argument("--form", default="instances", choices=("instances", "rows"))
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--seconds", type=float, default=12.0)
    a = p.parse_args()
    S.LOOPSTACK_FORM = a.form
    project = S.WORK / "project"
    if not (project / "loopstack.yaml").exists():
        sys.exit("run benchmarks/b4_overhead.py once first (it makes the B4 project)")
    bodies, port, name = S.bodies("loopstack", a.model, a.rows), S.free_port(), S.loopstack_name(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        wrapper, trace = Path(tmp) / "stamped_serve.py", Path(tmp) / "trace.json"
        wrapper.write_text(WRAPPER)
        srv = subprocess.Popen(["taskset", "-c", S.SERVER_CORE, sys.executable, str(wrapper), str(trace), "serve",
                                "--project", str(project), "--model", name, "--host", "127.0.0.1", "--port", str(port),
                                "--max-batch-size", str(a.rows), "--cache-entries", "0", "--no-access-log"],
                               env={**os.environ, **S.THREAD_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            out = subprocess.run(["taskset", "-c", S.CLIENT_CORE, sys.executable, str(HERE / "b4_client.py"),
                                  "--port", str(port), "--path", S.predict_path("loopstack", a.model, a.rows),
                                  "--bodies", str(bodies), "--concurrency", "1", "--seconds", str(a.seconds),
                                  "--warmup-seconds", "2"], capture_output=True, text=True, check=True)
            res = json.loads(out.stdout)
        finally:
            srv.send_signal(signal.SIGINT)
            srv.wait(60)
        skip = max(1, int(res.get("ok", 0) * 0.1))
        print(f"{a.model}, {a.rows} rows, `{a.form}` bodies: client p50 {res['p50_ms']:.3f} ms over {res['ok']} "
              f"requests")
        print("\n".join(report(json.loads(trace.read_text()), skip)))


if __name__ == "__main__":
    main()
