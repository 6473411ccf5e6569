"""B4 peer: the B4 model served by Ray Serve (runs in .bench/ray; started by b4_serving.py).

    B4_MODEL=mlp B4_BATCH=on B4_MAX_BATCH=32 B4_MAX_LATENCY_MS=5 \\
        .bench/ray/bin/python benchmarks/b4_ray_serve.py --port 8000

A local Ray instance (num_cpus=1, no dashboard) with one replica of one deployment behind Serve's HTTP
proxy on 127.0.0.1:PORT. `POST /predict` with {"x": [[30 floats], ...]} answers a JSON list of
positive-class scores. Batching on: `@serve.batch(max_batch_size=B4_MAX_BATCH,
batch_wait_timeout_s=B4_MAX_LATENCY_MS/1000)`; off: the model is called once per request. Access logs
off (as for every server in B4); `max_ongoing_requests` raised from Ray's default (5) to 256 so the
replica can see the client's concurrency at all. Ray exports its own batch metrics only through its
metrics agent, so the replica counts batches itself: GET /stats -> {"batches", "requests"}.
Prints READY when the application is running; SIGTERM/SIGINT shut Serve and Ray down.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import numpy as np
import ray
from ray import serve
from ray.serve.schema import LoggingConfig
from starlette.requests import Request

import b4_models

MODEL = os.environ.get("B4_MODEL", "mlp")
BATCH = os.environ.get("B4_BATCH", "on") == "on"
MAX_BATCH = int(os.environ.get("B4_MAX_BATCH", "32"))
WAIT_S = float(os.environ.get("B4_MAX_LATENCY_MS", "5")) / 1000.0
LOGGING = LoggingConfig(enable_access_log=False, log_level="WARNING")


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 1},
                  logging_config=LOGGING)
class B4Ray:
    def __init__(self) -> None:
        b4_models.single_thread()
        b4_models.quiet()
        self.model = b4_models.load(MODEL)
        self.batches = 0
        self.requests = 0

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)[:, 1]

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
    async def batched(self, xs: list[np.ndarray]) -> list[list[float]]:
        self.batches += 1
        self.requests += len(xs)
        p = self._score(np.vstack(xs)).tolist()
        out, i = [], 0
        for x in xs:
            out.append(p[i:i + len(x)])
            i += len(x)
        return out

    async def __call__(self, request: Request):
        if request.url.path.rstrip("/").endswith("/stats"):
            return {"batches": self.batches, "requests": self.requests}
        x = np.asarray((await request.json())["x"], dtype=np.float64)
        if BATCH:
            return await self.batched(x)
        self.batches += 1
        self.requests += 1
        return self._score(x).tolist()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--temp-dir", default="/tmp/ray_b4")
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=a.temp_dir,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                       if k.startswith(("B4_", "OMP_", "OPENBLAS_", "MKL_"))}})
    serve.start(http_options={"host": "127.0.0.1", "port": a.port}, logging_config=LOGGING)
    serve.run(B4Ray.bind(), name="b4", route_prefix="/", logging_config=LOGGING)
    print("READY", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
