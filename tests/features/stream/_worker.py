"""Child process for the crash tests (run with ``python -m tests.features.stream._worker``).

``materialize ROOT START_US END_US CHUNK_ROWS``: materialize, printing ``applied <rows>`` after every
chunk's atomic write (and pausing 20 ms so the parent can kill it at a random point).
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
        online = p.online
        real = online.apply_events

        def apply_events(view, events, progress=None):
            stats = real(view, events, progress=progress)
            sys.stdout.write(f"applied {len(events)}\n")
            sys.stdout.flush()
            time.sleep(0.02)
            return stats

        online.apply_events = apply_events
        materialize(p, int(argv[2]), int(argv[3]), chunk_rows=int(argv[4]), progress=False)
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
