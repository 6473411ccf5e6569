"""Generated comment stream for the spam-classifier scenario (DOMAIN.md): deterministic by seed.

About 2 % of comments are spam; spam comes from a small set of spammer accounts that post in
bursts, with more URLs and newer accounts — so the author's recent spam count is a strong feature.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

WORDS = ("great post thanks interesting agree disagree love this article more please why how nice "
         "useful helpful question answer read later good point").split()
SPAM_WORDS = "free offer click win prize cheap deal buy now limited crypto bonus".split()


def demo_start() -> datetime:
    """Where `loopstack demo`'s two weeks of comments begin: 16 days before today (UTC midnight), so they
    end 48-72 hours before now and the online store's 7-day windows are current when the server reads
    them. (With 15 days the gap fell to 24 h just after midnight UTC, and the loop's shadow step then
    failed its score-PSI check against the offline scores: the demo depended on the time of day.)"""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=16)


def generate_comments(n: int = 5000, n_authors: int = 300, days: int = 14, spam_rate: float = 0.02,
                      seed: int = 7, start: datetime | None = None) -> list[dict]:
    """`n` comment events over `days` days, sorted by event time, as dicts (ts is an aware datetime)."""
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 11, 1, tzinfo=timezone.utc)
    spammers = rng.choice(n_authors, size=max(1, n_authors // 30), replace=False)
    offsets = np.sort(rng.uniform(0, days * 86_400, size=n))
    out = []
    for i, sec in enumerate(offsets):
        spam = i % 3 == 0 and rng.random() < spam_rate * 3  # bursts: only every third slot
        author = int(rng.choice(spammers)) if spam else int(rng.integers(0, n_authors))
        words = rng.choice(SPAM_WORDS if spam else WORDS, size=int(rng.integers(3, 15)))
        n_urls = int(rng.integers(1, 4)) if spam else int(rng.random() < 0.05)
        text = " ".join(words) + "".join(f" http://x{int(rng.integers(0, 99))}.example" for _ in range(n_urls))
        out.append({
            "comment_id": i, "author_id": author, "item_id": int(rng.integers(0, 500)), "text": text,
            "n_urls": n_urls, "is_spam": int(spam), "new_account": int(spam and rng.random() < 0.7),
            "ts": start + timedelta(seconds=float(sec)),
        })
    return out


def bad_records() -> list[dict]:
    """Records that break the comments schema: each must be dead-lettered with a reason."""
    return [
        {"item_id": 1, "text": "no author", "n_urls": 0, "ts": "2026-11-03T10:00:00+00:00"},
        {"author_id": 5, "item_id": 1, "text": "urls is text", "n_urls": "many", "ts": "2026-11-03T10:00:01+00:00"},
        {"author_id": 6, "item_id": 2, "text": "bad time", "n_urls": 0, "ts": "yesterday-ish"},
        {"author_id": "seven", "item_id": 3, "text": "author is text", "n_urls": 0, "ts": "2026-11-03T10:00:02+00:00"},
    ]
