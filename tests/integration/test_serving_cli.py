"""`loopstack serve` as a real process: JSON access log with request ids, and graceful shutdown on SIGTERM
(in-flight requests are answered, the prediction log is flushed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.serving_env import ConstantModel, SlowModel, body, make_project, predictions, register
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = f"{ROOT / 'src'}{os.pathsep}{ROOT}"   # this checkout's loopstack, and its tests


@pytest.mark.slow
def test_serve_cli_answers_logs_json_and_drains_on_sigterm(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=30)
    register(p, SlowModel(ConstantModel(0.4), delay=1.5))
    p.close()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    proc = subprocess.Popen([sys.executable, "-m", "loopstack", "serve", "-p", str(tmp_path / "proj"), "--model",
                             "spam", "--port", str(port), "--max-latency-ms", "20", "--deadline-ms", "20000",
                             "--model-budget-ms", "20000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        results: list = []

        def call(i: int) -> None:
            r = httpx.post(f"{url}/v1/models/spam:predict", json=body(author=i), timeout=30,
                           headers={"x-request-id": f"drain-{i}"})
            results.append((r.status_code, r.json()))
        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)              # the requests are in the batcher / on the model now
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), err   # uvicorn re-raises the signal after its clean shutdown
    assert [s for s, _ in results] == [200] * 4, results
    assert all(b["prediction"] == pytest.approx(0.4) for _, b in results)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("path") == "/v1/models/spam:predict"]
    assert {x["request_id"] for x in access} == {f"drain-{i}" for i in range(4)}
    assert all(x["status"] == 200 and x["variant"] == "production" for x in access)
    from loopstack.project import Project
    with Project(tmp_path / "proj") as p2:
        logged = {r["request_id"] for r in predictions(p2) if r["kind"] == "prediction"}
    assert {f"drain-{i}" for i in range(4)} <= logged


@pytest.mark.slow
def test_serve_cli_refuses_an_unknown_model_before_binding(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=10)
    p.close()
    r = subprocess.run([sys.executable, "-m", "loopstack", "serve", "-p", str(tmp_path / "proj"), "--model", "nope",
                        "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert r.returncode == 2 and "no model named 'nope'" in r.stderr


@pytest.mark.slow
def test_serve_cli_refuses_an_unknown_or_invalid_alias_before_binding(tmp_path):
    """`--model spam@nope` used to bind and answer 503 forever, logging the missing alias every second."""
    p = make_project(tmp_path / "proj", n_comments=10)
    register(p, ConstantModel(0.4))
    p.close()
    for spec, words in (("spam@nope", "model 'spam' has no alias 'nope' (aliases: @production)"),
                        ("spam@1", "invalid alias '1'")):
        r = subprocess.run([sys.executable, "-m", "loopstack", "serve", "-p", str(tmp_path / "proj"), "--model",
                            spec, "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": PYTHONPATH, "COLUMNS": "200"})
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (spec, r.stderr)
