"""B4 peer: the B4 model served by BentoML 1.4 (runs in .bench/bentoml; started by b4_serving.py).

    B4_MODEL=mlp B4_BATCH=on B4_MAX_BATCH=32 B4_MAX_LATENCY_MS=5 \\
        .bench/bentoml/bin/bentoml serve b4_bentoml_service:B4Model --host 127.0.0.1 --port 3000

`POST /predict` with {"x": [[30 floats], ...]} answers a JSON list of positive-class scores, one per row.
Batching on: a batchable API (BentoML's adaptive CorkDispatcher; `max_latency_ms` is BentoML's latency
budget, past which it sheds requests with 503) with `max_batch_size`; off: a plain API. One worker,
no access log (as for every server in B4).
BentoML exposes the batch-size histogram `bentoml_service_adaptive_batch_size` on GET /metrics.
"""
from __future__ import annotations

import os

import bentoml
import numpy as np

import b4_models

MODEL = os.environ.get("B4_MODEL", "mlp")
BATCH = os.environ.get("B4_BATCH", "on") == "on"
MAX_BATCH = int(os.environ.get("B4_MAX_BATCH", "32"))
MAX_LATENCY_MS = int(float(os.environ.get("B4_MAX_LATENCY_MS", "5")))


@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class B4Model:
    def __init__(self) -> None:
        b4_models.single_thread()
        b4_models.quiet()
        self.model = b4_models.load(MODEL)

    if BATCH:
        @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
        def predict(self, x: np.ndarray) -> np.ndarray:
            return self.model.predict_proba(x)[:, 1]
    else:
        @bentoml.api
        def predict(self, x: np.ndarray) -> np.ndarray:
            return self.model.predict_proba(x)[:, 1]
