"""Shared by the tests and their child processes: definitions, a project factory, deterministic events."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from loopstack import Count, CountDistinct, Entity, EventSource, FeatureView, Field, Last, Max, Mean, Min, Sum
from loopstack.project import Project

SCHEMA = [Field("author_id", "int64"), Field("n", "int64", required=False),
          Field("amount", "float64", required=False), Field("label", "string", required=False)]


def definitions(lateness: str | None = "30m", partitions: int = 2) -> list:
    """One source, two views covering every aggregation type, filters, two windows, ttl and plain fields."""
    author = Entity("author", "author_id")
    events = EventSource("events", "ts", SCHEMA, partitions=partitions)
    windows = FeatureView("wins", entity=author, source=events, allowed_lateness=lateness, features=[
        Count(window="1h", name="cnt_1h"), Count(window="2h", name="cnt_2h"), Count("n", window="2h", name="cnt_n_2h"),
        Sum("n", window="1h", name="sum_n_1h"), Sum("amount", window="2h", name="sum_amt_2h"),
        Mean("amount", window="1h", name="mean_amt_1h"), Mean("n", window="2h", name="mean_n_2h"),
        Min("amount", window="1h", name="min_amt_1h"), Max("n", window="2h", name="max_n_2h"),
        Last("label", window="1h", name="last_label_1h"), CountDistinct("label", window="2h", name="dist_2h"),
        Count(window="2h", filter="label == 'spam'", name="spam_2h"),
    ])
    plain = FeatureView("plain", entity=author, source=events, ttl="90m", allowed_lateness=lateness, features=[
        Last("n", name="last_n"), Last("amount", name="last_amount"), Last("label", name="last_label"),
        Last("n", filter="n > 50", name="last_big_n"),
    ])
    return [author, events, windows, plain]


def make_project(root: Path, backend: str = "sqlite", redis_url: str | None = None, prefix: str | None = None,
                 online_path: str = "data/online.db", lateness: str | None = "30m", partitions: int = 2) -> Project:
    """A project folder whose online store is SQLite (at `online_path`) or the given Redis (unique prefix)."""
    root = Path(root)
    p = Project.init(root, example=False)
    online = (f"online:\n  backend: redis\n  url: {redis_url}\n  prefix: {prefix or 't' + uuid.uuid4().hex[:10]}\n"
              if backend == "redis" else f"online:\n  backend: sqlite\n  path: {online_path}\n")
    (root / "loopstack.yaml").write_text(f"name: t\ndefinitions: definitions.py\n{online}")
    p = Project(root)
    p.apply(definitions(lateness, partitions))
    return p


def gen_events(n: int, seed: int = 0, base: datetime | None = None, span_s: int = 3 * 3600,
               authors: int = 7) -> list[dict]:
    """`n` events over `span_s` seconds before `base` (default now), with ties, nulls and a few repeated times."""
    rng = random.Random(seed)
    base = base or datetime.now(timezone.utc)
    out = []
    for i in range(n):
        sec = rng.randint(0, span_s)
        if i and rng.random() < 0.15:  # exact timestamp ties with an earlier event
            ts = out[rng.randrange(len(out))]["ts"]
        else:
            ts = base - timedelta(seconds=sec, microseconds=rng.randrange(1_000_000))
        out.append({"author_id": rng.randrange(authors),
                    "n": None if rng.random() < 0.1 else rng.randint(0, 100),
                    "amount": None if rng.random() < 0.1 else round(rng.uniform(-5, 50), 3),
                    "label": rng.choice(["spam", "ham", "ham", "eggs", None]),
                    "ts": ts})
    return out


def in_time_order(events: list[dict]) -> list[dict]:
    """The events sorted by event time (a live stream; `gen_events` alone is a shuffled backlog)."""
    return sorted(events, key=lambda e: e["ts"])


def dump_state(project: Project) -> dict:
    """Every hash of the online store with all its fields, for exact comparisons. Left out: the
    wall-clock `applied_at` of the per-view meta hashes. Normalised: the value lists of CountDistinct
    partials are sorted (state.py stores a Python set as a list in hash-seed order)."""
    from loopstack.features.online.state import TILE, tile_partials, tile_raw
    store = project.online_store
    keys = sorted(store.scan(""))
    plans = {v: project.online.plan(v) for v in project.registry.views()}
    out = {}
    for k, fields in sorted(store.read(keys).items()):
        plan = plans.get(k.split("|", 1)[0])
        row = {}
        for f, b in sorted(fields.items()):
            if f == "applied_at":
                continue
            if plan is not None and f.startswith(TILE):
                partials = tile_partials(b)
                for sig, part in zip(plan.sigs, partials):
                    if sig.kind == "dist":
                        part[1] = sorted(part[1], key=repr)
                b = repr((partials, tile_raw(b)))
            row[f] = b
        out[k] = row
    return out


def served(project: Project, times: list, authors: int = 7) -> list:
    """Every feature of both views for every author at each time: what the online store serves."""
    refs = [f"{v}:{f.name}" for v in ("wins", "plain") for f in project.registry.views()[v].features]
    out = []
    for t in times:
        resp = project.online.get_online_features(refs, [{"author_id": a} for a in range(authors)], as_of=t)
        out.append([[r[c] for c in resp.features] for r in resp.rows])
    return out


def assert_same_served(a: list, b: list, rel: float = 1e-9) -> None:
    """Equal served values; floats within `rel` (float sums may be added in a different tile order)."""
    import math
    assert len(a) == len(b)
    for ti, (x, y) in enumerate(zip(a, b)):
        for ai, (r, s) in enumerate(zip(x, y)):
            for j, (u, v) in enumerate(zip(r, s)):
                if isinstance(u, float) and isinstance(v, float):
                    assert math.isclose(u, v, rel_tol=rel, abs_tol=1e-9), (ti, ai, j, u, v)
                else:
                    assert u == v, (ti, ai, j, u, v)
