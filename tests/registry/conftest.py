from __future__ import annotations

import pytest

from loopstack.meta.artifacts import ArtifactStore
from loopstack.meta.db import MetadataStore
from loopstack.registry import ModelValidationGate, Registry
from tests.registry.helpers import SIGNATURE, ThresholdModel


def make_registry(url: str, root) -> Registry:
    return Registry(MetadataStore(url), ArtifactStore(root / "artifacts"), cache_dir=root / "cache")


@pytest.fixture
def reg(meta_url, tmp_path):
    """A registry on SQLite and on the real PostgreSQL."""
    r = make_registry(meta_url, tmp_path)
    yield r
    r.meta.close()


PASSING = {"passed": True, "reasons": [["absolute:precision", True, "precision = 0.97, needs >= 0.95"]]}


def register(r: Registry, name: str = "spam", n: int = 1, gate: bool = True, **kw):
    """Register n versions (gate recorded as passed unless gate=False); returns their versions."""
    out = []
    for i in range(n):
        mv = r.register(name, ThresholdModel(0.1 * (i + 1)), signature=SIGNATURE, run_id=f"run-{i}",
                        dataset={"id": 7, "hash": "abc"}, metrics={"auc": 0.9 + i / 100}, params={"lr": 0.1},
                        code_version="deadbeef", **kw)
        if gate:
            r.record_gate(mv.ref, PASSING)
        out.append(mv.version)
    return out


def legacy_empty_model(r: Registry, name: str) -> None:
    """A model row with no versions, as a first registration that failed part-way left it before it was atomic."""
    from datetime import datetime, timezone

    from loopstack.registry.schema import models
    now = datetime.now(timezone.utc)
    with r.engine.begin() as conn:
        conn.execute(models.insert().values(name=name, description="", generation=0, created_at=now,
                                            updated_at=now))


def ladder_to(r: Registry, ref: str, state: str) -> None:
    """Walk a version up the ladder one rung at a time to `state`."""
    from loopstack.registry.stages import LADDER
    cur = r.get(ref).state
    for s in LADDER[LADDER.index(cur) + 1:LADDER.index(state) + 1]:
        r.promote(ref, s, reason=f"to {s}", evidence={"step": s})


@pytest.fixture
def gate():
    return ModelValidationGate(absolute={"precision": 0.95, "recall": 0.85},
                               relative={"guarded": {"auc": 0.01}, "primary": ("auc", 0.002)},
                               max_slice_gap={"recall": 0.1})
