"""Child process for the durability tests: appends in a loop and prints every acknowledged offset.

usage: python _appender.py ROOT NAME BATCHES BATCH_SIZE PAD
Prints ``partition offset name seq`` per acked record (after append returned), flushed per batch.
"""
from __future__ import annotations

import sys
from pathlib import Path

from loopstack.log.base import TopicConfig
from loopstack.log.local import LocalLog

root, name, batches, size, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
log = LocalLog(Path(root), segment_bytes=256 * 1024, index_interval=1024)
log.create_topic(TopicConfig("dur", 2))
seq = 0
for _b in range(batches):
    recs = [{"w": name, "seq": seq + i, "pad": "z" * pad} for i in range(size)]
    res = log.append("dur", recs, key=[f"{name}-{(seq + i) % 5}" for i in range(size)])
    sys.stdout.write("".join(f"{p} {o} {name} {seq + i}\n" for i, (p, o) in enumerate(res.offsets)))
    sys.stdout.flush()
    seq += size
