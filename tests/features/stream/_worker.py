"""Child process for the crash tests (run with ``python -m tests.features.stream._worker``).

``materialize ROOT START_US END_US CHUNK_ROWS [bulk|events]``: materialize (by the bulk paths, or
applying events chunk by chunk in time order), printing ``applied <fields>`` after every
atomic write of a chunk or batch of entities (and pausing 20 ms so the parent can kill it at a random point).
``stream ROOT MAX_RECORDS``: step a StreamProcessor until the topic is drained (the parent may set
LOOPSTACK_TEST_CRASH_AFTER_APPLY to make it die between an apply and its commit).
The online store comes from the environment (LOOPSTACK_ONLINE__*), so parent and child share it.
"""
from __future__ import annotations

import sys
import time

from loopstack.project import Project


def main(argv: list[str]) -> None:
    cmd, root = argv[0], argv[1]
    p = Project(root)
    if cmd == "materialize":
        from loopstack.features.materialize import materialize
        store = p.online.store
        real = store.write

        def write(batch):   # every chunk's (or batch of entities') atomic write, on every path
            real(batch)
            sys.stdout.write(f"applied {len(batch)}\n")
            sys.stdout.flush()
            time.sleep(0.02)

        store.write = write
        bulk = len(argv) < 6 or argv[5] != "events"
        materialize(p, int(argv[2]), int(argv[3]), chunk_rows=int(argv[4]), progress=False, bulk=bulk)
        print("done", flush=True)
    elif cmd == "stream":
        from loopstack.features.stream import StreamProcessor
        sp = StreamProcessor(p)
        while sp.step(int(argv[2])):
            pass
        print("done", sp.stats.applied, flush=True)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
