"""The demo end to end: its printed training frame agrees with a brute-force count over the stream, and
the lifecycle after the first deploy does what the story says (drift caught, explained, retrained,
the new version promoted by the loop with its audit trail, the report written)."""
from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from rich.console import Console

from loopstack.demo.data import demo_start, generate_comments
from loopstack.demo.run import run_demo
from loopstack.project import Project
from loopstack.serving.policy_store import PolicyStore

STEPS = ["dataset", "train", "gate", "register", "shadow", "canary", "experiment", "promote"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out, state = StringIO(), {}
    root = tmp_path_factory.mktemp("demo") / "demo"
    frame = run_demo(root, console=Console(file=out, width=120), state=state)
    return root, frame, out.getvalue(), state


@pytest.mark.slow
def test_demo_frame_is_point_in_time_correct(demo):
    _, frame, text, _ = demo
    assert "5000 accepted" in text and "4 dead-lettered" in text
    assert "5000 events applied, 0 too late" in text          # streamed into the online store
    assert "│ 99999  │ False │ 0       │ 0           │ None" in text  # unknown author: an empty history, as offline
    assert "values compared: 0 mismatches" in text and "parity" in text
    assert "label became final less than label_delay" in text  # the label delay dropped late labels
    assert "models:/spam/1: gate passed" in text and "candidate: 1" in text
    assert "what the router did" in text and "production → v1: 300" in text   # served over HTTP
    assert "canary → v2" in text and "0 users saw more than one variant (sticky)" in text
    assert "300 shadow copies" in text
    comments = generate_comments(start=demo_start())
    assert len(frame) == 8
    for _, row in frame.iterrows():
        t = row.event_timestamp
        spam = sum(c["is_spam"] for c in comments
                   if c["author_id"] == row.author_id and t - timedelta(days=7) <= c["ts"] < t)
        n = sum(1 for c in comments if c["author_id"] == row.author_id and t - timedelta(days=7) <= c["ts"] < t)
        assert (row.spam_7d, row.comments_7d) == (spam, n)
        assert row.spam_share_7d == (spam / n if n else 0.0)


@pytest.mark.slow
def test_drift_is_caught_only_once_labels_arrive_and_diagnosed_as_a_score_shift(demo):
    _, _, text, state = demo
    assert state["ab"]["outcome"] in ("archived", "promoted") and "always-valid p" in text
    flagged, n = state["drift"]["flagged"]["long, no links"]
    assert n > 50 and flagged / n < 0.2                       # production misses the new spam
    recall = [a for a in state["drift"]["alerts"] if a.metric == "recall"]
    assert recall and recall[0].layer == "product" and recall[0].value < 0.5 and recall[0].version == 1
    d = state["diagnosis"]
    assert d["stopped_at"] == "score_shift"
    assert [s["step"] for s in d["steps"]] == ["deploy", "feature_lag", "data_quality", "score_shift"]
    assert not any(s["found"] for s in d["steps"][:3])        # not a deploy, not stale features, not bad data
    assert "stopped at: score_shift" in text


@pytest.mark.slow
def test_the_alert_retrains_and_the_loop_promotes_a_better_version(demo):
    root, _, text, state = demo
    loop = state["loop"]
    assert loop["state"] == "done" and loop["history"] == [(s, "pass") for s in STEPS]
    p = Project(root)
    try:
        v = loop["version"]
        assert p.models.get("models:/spam@production").version == v
        audit = p.models.audit("spam", v)
        steps = [e for e in audit if e["action"] == "loop"]
        assert [e["evidence"]["step"] for e in steps] == STEPS
        assert all(e["actor"] == "loopstack-loop" and e["evidence"]["trigger"] == "alert" for e in steps)
        exp = steps[6]["evidence"]["evidence"]
        assert exp["goal"]["metric"] == "spam_caught" and exp["goal"]["significant"]
        assert exp["goal"]["treatment"] > exp["goal"]["control"] + 0.3   # it catches the new spam
        moves = [(e["from_state"], e["to_state"]) for e in audit if e["action"] == "transition"]
        assert moves == [("candidate", "shadow"), ("shadow", "canary"), ("canary", "experiment"),
                         ("experiment", "production")]
        assert PolicyStore(p.meta).get("spam").get("holdback_percent") == 2
    finally:
        p.close()
    report = state["report"]
    assert report.exists() and report.stat().st_size > 10_000 and str(report) in text.replace("\n", "")
