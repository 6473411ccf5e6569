"""Demo, live traffic: comments that arrive after the first deploy, served over HTTP, then stored.

Each batch of comments is scored by the model server first (online features as they stand, so a
comment never sees itself), then appended to the ``comments`` topic and streamed into the online
store; its label (a user report or a review) is appended to the ``labels`` topic when it arrives.
`drifted_comments` is the concept drift of DOMAIN.md: spammers switch to long texts without links,
from aged accounts with a clean history (bought or taken over), so nothing about the author says spam.
"""
from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from loopstack.demo.data import SPAM_WORDS, generate_comments


def live_comments(n: int, start: datetime, hours: float, *, seed: int, drift_share: float = 0.0,
                  max_text: int = 140, first_id: int = 100_000) -> pd.DataFrame:
    """`n` comments over `hours` from `start`: the usual stream, plus (with `drift_share` > 0) that share
    of new-style spam: long link-free texts from clean aged accounts, at most `max_text` characters (the
    training range, so nothing looks like a broken pipeline: the inputs are valid, the concept moved)."""
    rng = np.random.default_rng(seed)
    base = generate_comments(n=n, n_authors=300, days=1, spam_rate=0.02, seed=seed, start=start)
    scale = hours / 24
    for i, c in enumerate(base):
        c["ts"] = start + (c["ts"] - start) * scale
        c["comment_id"] = first_id + i
        if drift_share and rng.random() < drift_share:
            words: list[str] = []
            while True:
                w = str(rng.choice(SPAM_WORDS))
                if len(" ".join(words + [w])) > max_text - int(rng.integers(0, 25)):
                    break
                words.append(w)
            c.update(text=" ".join(words), n_urls=0, is_spam=1, new_account=0,
                     author_id=int(rng.integers(0, 300)), style="long, no links")
        else:
            c["style"] = "spam, links" if c["is_spam"] else "ham"
    return pd.DataFrame(base)


def serve(url: str, rows: pd.DataFrame, threads: int = 4) -> list[dict]:
    """POST each comment to the model server (by user = author, so assignment is sticky); returns one
    answer per row, in row order, with the row's comment id, label and style."""
    import httpx
    recs = rows.to_dict("records")
    out: list[Any] = [None] * len(recs)

    def client(idx: list[int]) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in idx:
                r = recs[i]
                body = {"entities": {"author_id": int(r["author_id"])}, "user_id": f"user-{int(r['author_id'])}",
                        "fields": {"text": r["text"], "n_urls": int(r["n_urls"]), "new_account": int(r["new_account"])}}
                res = c.post("/v1/models/spam:predict", json=body)
                a = res.json()
                out[i] = {**a, "ok": res.status_code == 200, "comment_id": int(r["comment_id"]),
                          "label": int(r["is_spam"]), "style": r["style"], "ts": r["ts"]}
    parts = [list(range(k, len(recs), threads)) for k in range(threads)]
    ts = [threading.Thread(target=client, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def store(project: Any, rows: pd.DataFrame) -> int:
    """Append the served comments to the ``comments`` topic and stream them into the online store."""
    from loopstack.features.stream import StreamProcessor
    events = [{"comment_id": int(r.comment_id), "author_id": int(r.author_id), "item_id": int(r.item_id),
               "text": r.text, "n_urls": int(r.n_urls), "is_spam": int(r.is_spam),
               "new_account": int(r.new_account), "ts": r.ts.isoformat()} for r in rows.itertuples()]
    res = project.log.append("comments", events)
    with StreamProcessor(project) as stream:
        stream.run(idle_timeout=0.3)
    return res.accepted


def deliver_labels(project: Any, answers: list[dict], delay: timedelta = timedelta(days=1)) -> int:
    """The reports and reviews of served comments arrive (`delay` after each comment)."""
    from loopstack.monitoring.windows import append_labels
    recs = [{"request_id": a["request_id"], "label": a["label"],
             "ts": (pd.Timestamp(a["ts"]) + delay).isoformat()} for a in answers if a and a.get("request_id")]
    return append_labels(project.log, recs)


def recall_by_style(answers: list[dict], threshold: float = 0.5) -> dict[str, tuple[int, int]]:
    """style -> (flagged, total) among served comments."""
    out: dict[str, list[int]] = {}
    for a in answers:
        if a and isinstance(a.get("prediction"), (int, float)):
            f = out.setdefault(a["style"], [0, 0])
            f[0] += int(float(a["prediction"]) >= threshold)
            f[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}
