"""A small project for serving tests: the template's spam definitions, a few hundred recent comments
materialized into the online store, and tiny scikit-learn models registered against a signature that
mixes online features, on-demand features (from features and from request fields) and a raw field.
Plus a real uvicorn server on a free loopback port, run in a thread.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd

from loopstack.project import Project
from loopstack.serving.config import ModelSpec, ServingConfig
from loopstack.serving.local_server import LoopbackServer

INPUTS = [
    {"ref": "author_stats:spam_7d", "version": 1, "column": "spam_7d", "dtype": "float64"},
    {"ref": "author_stats:comments_7d", "version": 1, "column": "comments_7d", "dtype": "float64"},
    {"ref": "spam_share_7d", "version": 1, "column": "spam_share_7d", "dtype": "float64"},
    {"ref": "url_count", "version": 1, "column": "url_count", "dtype": "float64"},
    {"ref": "text_length", "version": 1, "column": "text_length", "dtype": "float64"},
    {"ref": "new_account", "version": None, "column": "new_account", "dtype": "float64"},   # a raw request field
]
SIGNATURE = {"inputs": INPUTS, "outputs": [{"name": "score", "dtype": "float64", "positive_class": 1}]}
COLUMNS = [i["column"] for i in INPUTS]
SPAMMERS = (1, 2)


def body(author: int = 1, text: str = "free prize click now", n_urls: int = 2, new_account: int = 1,
         user: Any = None, **extra: Any) -> dict:
    """A valid :predict body."""
    b: dict = {"entities": {"author_id": author}, "fields": {"text": text, "n_urls": n_urls,
                                                             "new_account": new_account}}
    if user is not None:
        b["user_id"] = user
    return {**b, **extra}


class SlowModel:
    """Wraps a model; sleeps `delay` seconds per batch (a model that is slow, or a shadow to ignore)."""

    def __init__(self, model: Any, delay: float) -> None:
        self.model, self.delay = model, delay
        self.classes_ = model.classes_

    def predict_proba(self, X: Any) -> Any:
        time.sleep(self.delay)
        return self.model.predict_proba(X)


class ConstantModel:
    """Predicts a fixed probability (easy to tell versions apart)."""

    classes_ = np.array([0, 1])

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: Any) -> Any:
        return np.tile([1 - self.p, self.p], (len(X), 1))


def fit_model(seed: int = 0, flip: bool = False) -> Any:
    """A tiny imputer + logistic regression on synthetic rows with the signature's columns."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    rng = np.random.default_rng(seed)
    n = 400
    X = pd.DataFrame({"spam_7d": rng.integers(0, 5, n).astype(float), "comments_7d": rng.integers(1, 20, n) * 1.0,
                      "url_count": rng.integers(0, 4, n) * 1.0, "text_length": rng.integers(5, 80, n) * 1.0,
                      "new_account": rng.integers(0, 2, n) * 1.0})
    X["spam_share_7d"] = X.spam_7d / X.comments_7d
    X = X[COLUMNS]
    y = ((X.spam_7d > 1) | (X.url_count > 2)).astype(int)
    if flip:
        y = 1 - y
    return make_pipeline(SimpleImputer(), LogisticRegression(max_iter=200)).fit(X, y)


def make_project(root: Path, n_comments: int = 300) -> Project:
    """Template definitions applied, `n_comments` comments of the last 2 days materialized online."""
    p = Project.init(root, name="serving-test")
    p.apply(p.load_definitions())
    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(3)
    events = []
    for i in range(n_comments):
        author = int(rng.integers(0, 12))
        spam = int(author in SPAMMERS and rng.random() < 0.6)
        events.append({"author_id": author, "item_id": i, "text": "win cheap prize" if spam else "nice post",
                       "n_urls": int(spam) * 2, "is_spam": spam,
                       "ts": now - timedelta(hours=47) + timedelta(seconds=float(rng.uniform(0, 46 * 3600)))})
    p.log.append("comments", sorted(events, key=lambda e: e["ts"]))
    from loopstack.features.materialize import materialize
    materialize(p, now - timedelta(days=3), now, progress=False)
    return p


def register(p: Project, model: Any, state: str | None = "production") -> int:
    """Register `model` and move it to `state` (overriding the gate); returns its version."""
    mv = p.models.register("spam", model, signature=SIGNATURE)
    if state:
        p.models.promote(mv.ref, state, reason="test", override=True)
    return mv.version


def config(**kw: Any) -> ServingConfig:
    from loopstack.serving.batcher import BatchConfig
    kw.setdefault("models", (ModelSpec("spam"),))
    kw.setdefault("poll_interval_s", 0.1)
    kw.setdefault("batch", BatchConfig(max_batch_size=16, max_latency_ms=2.0))
    return ServingConfig(**kw)


class Server(LoopbackServer):
    """A LoopbackServer with an httpx client and wait helpers."""

    def __init__(self, app: Any) -> None:
        super().__init__(app, ready_path=None)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self, ready: bool = True, timeout: float = 60) -> "Server":
        super().start()
        if ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, f"not ready: {self.client.get('/readyz').text}"
            time.sleep(0.05)

    def wait_for(self, cond: Any, timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def predict(self, b: dict, **kw: Any) -> httpx.Response:
        return self.client.post("/v1/models/spam:predict", json=b, **kw)

    def stop(self) -> None:
        super().stop()
        self.client.close()


@contextmanager
def serving(p: Project, cfg: ServingConfig | None = None, ready: bool = True) -> Iterator[Server]:
    from loopstack.serving.app import create_app
    srv = Server(create_app(p, cfg or config())).start(ready)
    try:
        yield srv
    finally:
        srv.stop()


def predictions(p: Project) -> list[dict]:
    """Every record of the `predictions` topic."""
    return [r.value for r in p.log.replay("predictions")]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


async def raw_posts(port: int, path: str, bodies: list[bytes], clients: int) -> list[tuple[int, dict, bytes]]:
    """POST every body over `clients` keep-alive connections with a minimal HTTP/1.1 client (much less client
    CPU than httpx, so an overload test measures the server). Returns (status, headers, body) per request."""
    import asyncio
    queue = list(enumerate(bodies))
    out: list[Any] = [None] * len(bodies)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                i, b = queue.pop()
                writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(b)}\r\n\r\n".encode() + b)
                status = int((await reader.readline()).split()[1])
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = line.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                out[i] = (status, headers, await reader.readexactly(int(headers.get("content-length", 0))))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return out


class Traffic:
    """Client threads posting predictions until stopped (bounded: at most `limit` requests each).

    `make_body(i, n)` builds client i's n-th request; `keep(t, response)` what is recorded for it
    (per client in `results`, in order; all of them in `all`)."""

    def __init__(self, url: str, make_body: Any, keep: Any, threads: int = 3, limit: int = 3000) -> None:
        self.url, self.limit, self.make_body, self.keep = url, limit, make_body, keep
        self.results: list[list[Any]] = [[] for _ in range(threads)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            for n in range(self.limit):
                if self.stop.is_set():
                    return
                r = c.post("/v1/models/spam:predict", json=self.make_body(i, n))
                self.results[i].append(self.keep(time.monotonic(), r))

    def __enter__(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    @property
    def all(self) -> list[Any]:
        return [x for r in self.results for x in r]
