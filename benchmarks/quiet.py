"""Wait for this VM to stop handing freed memory back to its host before a timed run.

The guest kernel here reports free memory to the hypervisor (free page reporting: the `page_reporting`
module, `page_reporting.page_reporting_order` on the kernel command line). After a large process exits
(a loader, a server, a model), a reporting pass runs every ~2 s until all its memory is reported, and
each pass stalls every process on the machine for ~10-20 ms. A timed run that overlaps those passes
charges the stalls to whichever system it measures: B2's first HTTP repeat after a load had a p99 of
2-11 ms against ~1 ms for the next one, with a stall at each pass (docs/benchmarks.md, B2).

`wait_quiet()` polls the module's `reported_kib` counter and returns once it has not moved for
`quiet_s` seconds (or after `timeout_s`). On a kernel without those counters it returns at once.
"""
from __future__ import annotations

import time
from pathlib import Path

COUNTER = Path("/sys/module/page_reporting/parameters/reported_kib")


def reported_kib() -> int | None:
    """KiB of free memory the guest has reported to its host so far; None where the kernel does not say."""
    try:
        return int(COUNTER.read_text())
    except (OSError, ValueError):
        return None


def wait_quiet(quiet_s: float = 4.0, timeout_s: float = 120.0, poll_s: float = 0.1) -> dict:
    """Block until no memory was reported to the host for `quiet_s` seconds (at most `timeout_s`).
    Returns what was waited: seconds, MiB reported meanwhile, and whether it timed out."""
    first = last = reported_kib()
    t0 = time.perf_counter()
    if first is None:
        return {"seconds": 0.0, "reported_mib": None, "timed_out": False}
    since = t0
    while True:
        now = time.perf_counter()
        if now - since >= quiet_s or now - t0 >= timeout_s:
            break
        time.sleep(poll_s)
        cur = reported_kib()
        if cur != last:
            last, since = cur, time.perf_counter()
    return {"seconds": round(time.perf_counter() - t0, 2), "reported_mib": round(((last or 0) - first) / 1024, 1),
            "timed_out": time.perf_counter() - since < quiet_s}
