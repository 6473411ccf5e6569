"""The demo end to end: its printed training frame agrees with a brute-force count over the stream."""
from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from rich.console import Console

from loopstack.demo.data import generate_comments
from loopstack.demo.run import run_demo


@pytest.mark.slow
def test_demo_frame_is_point_in_time_correct(tmp_path):
    out = StringIO()
    frame = run_demo(tmp_path / "demo", console=Console(file=out, width=120))
    text = out.getvalue()
    assert "5000 accepted" in text and "4 dead-lettered" in text
    assert "5000 events applied, 0 too late" in text          # streamed into the online store
    assert "│ 99999  │ False │ None" in text                     # unknown author: nulls plus found=False
    assert "values compared: 0 mismatches" in text and "parity" in text
    assert "label became final less than label_delay" in text  # the label delay dropped late labels
    assert "models:/spam/1: gate passed" in text and "candidate: 1" in text
    assert "what the router did" in text and "production → v1: 300" in text   # served over HTTP
    assert "canary → v2" in text and "0 users saw more than one variant (sticky)" in text
    assert "300 shadow copies" in text
    comments = generate_comments()
    assert len(frame) == 8
    for _, row in frame.iterrows():
        t = row.event_timestamp
        spam = sum(c["is_spam"] for c in comments
                   if c["author_id"] == row.author_id and t - timedelta(days=7) <= c["ts"] < t)
        n = sum(1 for c in comments if c["author_id"] == row.author_id and t - timedelta(days=7) <= c["ts"] < t)
        assert (row.spam_7d, row.comments_7d) == (spam, n)
        assert row.spam_share_7d == (spam / n if n else 0.0)
