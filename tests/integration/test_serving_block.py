"""The block path of :predict_batch (serving/block.py) on real HTTP on loopback: a batch whose instances all
take one plain route is answered as one block, and gives the very answers, prediction-log records and
metrics the general path gives for the same request; whatever is not a plain block (several users, values
to convert, a shadow, a missing column) takes the general path; a block whose model fails walks the ladder."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from loopstack.project import Project
from loopstack.serving import app as app_module
from loopstack.serving.block import Block
from loopstack.serving.config import ModelSpec
from loopstack.serving.policy_store import PolicyStore
from tests.integration.serving_env import config, metric, predictions, serving

COLS = ("x1", "x2", "x3")
SIG = {"inputs": [{"ref": c, "version": None, "column": c, "dtype": "float64"} for c in COLS],
       "outputs": [{"name": "score", "dtype": "float64", "positive_class": 1}]}


class SumModel:
    """A fixed logistic score of the three inputs (order matters: a swapped column changes it)."""
    classes_ = np.array([0, 1])

    def predict_proba(self, X: Any) -> Any:
        s = 1 / (1 + np.exp(-(np.asarray(X, dtype=float) @ np.array([0.5, -1.0, 2.0]))))
        return np.column_stack([1 - s, s])


class BrokenModel:
    classes_ = np.array([0, 1])

    def predict_proba(self, X: Any) -> Any:
        raise RuntimeError("the model broke")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    p = Project.init(tmp_path_factory.mktemp("block") / "proj", name="block-test")
    for name, model in (("plain", SumModel()), ("broken", BrokenModel()), ("shadowed", SumModel()),
                        ("shadowed", SumModel())):
        mv = p.models.register(name, model, signature=SIG)
        p.models.promote(mv.ref, "production" if mv.version == 1 else "shadow", reason="test", override=True)
    PolicyStore(p.meta).update("broken", {"baseline": 0.25})
    cfg = config(models=(ModelSpec("plain"), ModelSpec("broken"), ModelSpec("shadowed")), feature_sample=1.0,
                 max_instances=64, cache_entries=0)   # a result cache takes the general path
    with serving(p, cfg) as s:
        s.project = p
        yield s
    p.close()


@pytest.fixture
def taken(monkeypatch):
    """What each call of predict_block returned: "block", "general" (failed model: the ladder's answers) or
    None (not a plain block)."""
    seen: list = []
    real = app_module.predict_block

    async def spy(*args: Any, **kw: Any) -> Any:
        out = await real(*args, **kw)
        seen.append("block" if type(out) is Block else None if out is None else "general")
        return out
    monkeypatch.setattr(app_module, "predict_block", spy)
    return seen


def _general(monkeypatch) -> None:
    async def never(*args: Any, **kw: Any) -> None:
        return None
    monkeypatch.setattr(app_module, "predict_block", never)


def _post(srv, model: str, body: dict, rid: str) -> tuple[int, dict]:
    r = srv.client.post(f"/v1/models/{model}:predict_batch", content=json.dumps(body),
                        headers={"content-type": "application/json", "x-request-id": rid})
    return r.status_code, r.json()


def _records(srv, rid: str) -> list[dict]:
    srv.app.state.service.plog.flush()
    out = []
    for rec in predictions(srv.project):
        if rec["request_id"].startswith(rid + ":"):
            out.append({**{k: v for k, v in rec.items() if k not in ("ts", "latency_ms")},
                        "request_id": rec["request_id"][len(rid):]})
    return sorted(out, key=lambda r: int(r["request_id"][1:]))


def _same(status: int, out: dict, rid: str) -> tuple[int, dict]:
    items = [{**i, "request_id": i["request_id"][len(rid):]} for i in out.get("predictions", [])]
    return status, {**{k: v for k, v in out.items() if k not in ("latency_ms", "request_id")}, "predictions": items}


def _counts(srv, model: str) -> tuple[float, ...]:
    text = srv.client.get("/metrics").text
    return (metric(text, "loopstack_serving_requests_total", model=model),
            metric(text, "loopstack_serving_rung_used_total", model=model),
            metric(text, "loopstack_serving_request_duration_seconds_count", model=model),
            metric(text, "loopstack_serving_rung_failures_total", model=model))


VALUES = [[0.5, 1.5, -2.0], [3.0, 0.25, 1.0], [-1.0, 0.0, 0.75]]
PLAIN = [   # (name, model, body): each a plain block
    ("rows in model order", "plain", {"columns": list(COLS), "rows": VALUES, "user_id": "u1"}),
    ("rows in another order, an extra column", "plain",
     {"columns": ["x3", "zz", "x1", "x2"], "rows": [[v[2], 9.0, v[0], v[1]] for v in VALUES]}),
    ("instances", "plain", {"instances": [{"fields": dict(zip(COLS, v))} for v in VALUES], "user_id": 7}),
    ("one row", "plain", {"columns": list(COLS), "rows": VALUES[:1]}),
    ("a model that fails: the baseline answers", "broken", {"columns": list(COLS), "rows": VALUES}),
]


@pytest.mark.parametrize("case", range(len(PLAIN)), ids=[c[0] for c in PLAIN])
def test_a_plain_block_answers_records_and_counts_as_the_general_path(srv, taken, monkeypatch, case):
    _, model, body = PLAIN[case]
    before = _counts(srv, model)
    block = _post(srv, model, body, f"blk{case}")
    mid = _counts(srv, model)
    assert taken == ["general" if model == "broken" else "block"]
    _general(monkeypatch)
    general = _post(srv, model, body, f"gen{case}")
    after = _counts(srv, model)
    assert block[0] == general[0] == 200, (block, general)
    assert _same(*block, f"blk{case}") == _same(*general, f"gen{case}")
    assert [m - b for m, b in zip(mid, before)] == [a - m for a, m in zip(after, mid)]
    assert _records(srv, f"blk{case}") == _records(srv, f"gen{case}")
    assert len(_records(srv, f"blk{case}")) == len(body.get("rows") or body.get("instances"))
    rungs = {i["rung"] for i in block[1]["predictions"]}
    if model == "broken":
        assert rungs == {"baseline"} and {i["prediction"] for i in block[1]["predictions"]} == {0.25}
        assert mid[3] > before[3]      # the model rung's failure was counted
    else:
        rows = len(block[1]["predictions"])
        want = (1 / (1 + np.exp(-(np.array(VALUES[:rows]) @ np.array([0.5, -1.0, 2.0]))))).tolist()
        assert rungs == {"model"} and [i["prediction"] for i in block[1]["predictions"]] == pytest.approx(want)
        assert _records(srv, f"blk{case}")[0]["features"] == dict(zip(COLS, VALUES[0]))


OTHERS = [   # (name, model, body, status): not a plain block, answered by the general path
    ("a user per instance", "plain",
     {"instances": [{"fields": dict(zip(COLS, v)), "user_id": f"u{i}"} for i, v in enumerate(VALUES)]}, 200),
    ("integers to convert", "plain", {"columns": list(COLS), "rows": [[1, 2, 3], [4, 5, 6]]}, 200),
    ("a shadow version", "shadowed", {"columns": list(COLS), "rows": VALUES}, 200),
    ("a missing column", "plain", {"columns": ["x1", "x2"], "rows": [[1.0, 2.0]]}, 422),
]


@pytest.mark.parametrize("case", range(len(OTHERS)), ids=[c[0] for c in OTHERS])
def test_what_is_not_a_plain_block_takes_the_general_path(srv, taken, monkeypatch, case):
    _, model, body, status = OTHERS[case]
    got = _post(srv, model, body, f"oth{case}")
    assert taken in ([None], [])     # [] : the request never reached the block path
    assert got[0] == status, got
    _general(monkeypatch)
    assert _same(*got, f"oth{case}") == _same(*_post(srv, model, body, f"ogen{case}"), f"ogen{case}")
    if status == 422:
        assert "missing request field 'x3'" in got[1]["detail"]
