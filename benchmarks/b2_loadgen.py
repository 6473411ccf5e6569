"""B2 HTTP load generator: a fixed arrival rate (open loop) against one server on loopback.

Request i is due at ``t0 + i / rate`` whether or not earlier ones have finished (open loop), and
its latency is measured from when it was *due* to when its response is read, so a stalled server
is charged for the requests queued behind it (no coordinated omission). HTTP/1.1 keep-alive
connections on raw asyncio streams (a pool, grown on demand up to ``--max-conns``), so the client
costs the 2-core machine as little CPU as possible. The event loop waits with select(2), whose timeout
has microsecond resolution: epoll's is a millisecond, rounded up, which would send each request up to
1 ms after it is due and charge that to the server. Bodies are pre-encoded JSON in the Feast shape
``{"features": [...], "entities": {"user_id": [...]}}``, which both servers accept.

Usage: b2_loadgen.py --port P --path /get-online-features --bodies FILE.jsonl --rate 200
                     --seconds 20 [--warmup-seconds 3]
Prints one JSON line: achieved rate, p50/p95/p99/max latency (ms, from due time), service-time
percentiles (from send), send lag (send - due: the client's own timing error), status counts, connections used.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import selectors
import time

import numpy as np


SPIN_S = 150e-6   # sleep until this long before a request is due, then spin to the due time


def precise_timers() -> None:
    """Ask Linux for 1 ns timer slack (the default 50 us would be added to every sleep)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)   # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


class Pool:
    def __init__(self, host: str, port: int, max_conns: int) -> None:
        self.host, self.port, self.max = host, port, max_conns
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.waiters: asyncio.Queue = asyncio.Queue()
        self.peak_in_use = 0
        self.in_use = 0
        self.reconnects = 0

    def get_idle(self):
        """An idle open connection, taken without awaiting (None if there is none)."""
        while self.idle and (self.idle[-1][0].at_eof() or self.idle[-1][1].is_closing()):
            self.idle.pop()[1].close()  # closed by the server while idle (keep-alive timeout)
            self.opened -= 1
        if not self.idle:
            return None
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return self.idle.pop()

    async def get(self):
        c = self.get_idle()
        if c is not None:
            return c
        if self.opened < self.max:
            self.opened += 1
            c = await asyncio.open_connection(self.host, self.port)
        else:
            c = await self.waiters.get()
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return c

    def put(self, c) -> None:
        self.in_use -= 1
        if self.waiters._getters:  # someone is waiting for a connection: hand it over
            self.waiters.put_nowait(c)
        else:
            self.idle.append(c)

    def drop(self) -> None:
        self.in_use -= 1
        self.opened -= 1


async def one(pool: Pool, head: bytes, body: bytes, due: float, out: list, i: int, c=None, sent: float = 0.0,
              ) -> None:
    """One request; `c`, `sent`: a connection its bytes were already written to, and when (the scheduler
    writes at the due time itself when a connection is idle, rather than one loop turn later)."""
    if c is None:
        c = await pool.get()
        sent = time.perf_counter()
        c[1].write(head + body)
    r, w = c
    try:
        try:
            block = await r.readuntil(b"\r\n\r\n")   # status line and headers in one call
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            # a kept-alive connection the server had just closed: resend once on a new one
            w.close()
            r, w = c = await asyncio.open_connection(pool.host, pool.port)
            pool.reconnects += 1
            w.write(head + body)
            block = await r.readuntil(b"\r\n\r\n")
        line, *headers = block.split(b"\r\n")
        status = int(line.split()[1])
        length = 0
        close = False
        for h in headers:
            k, _, v = h.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
        if length:
            await r.readexactly(length)
        done = time.perf_counter()
        out[i] = (done - due, done - sent, status, sent - due)
        if close:
            w.close()
            pool.drop()
        else:
            pool.put(c)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        out[i] = (time.perf_counter() - due, time.perf_counter() - sent, 0, sent - due)
        w.close()
        pool.drop()


async def run(a) -> dict:
    bodies = [ln.rstrip("\n").encode() for ln in open(a.bodies) if ln.strip()]
    pool = Pool(a.host, a.port, a.max_conns)
    for _ in range(a.pre_conns):
        pool.opened += 1
        pool.idle.append(await asyncio.open_connection(a.host, a.port))
        pool.in_use += 1
        pool.put(pool.idle.pop())

    def heads(body: bytes) -> bytes:
        return (f"POST {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()

    async def phase(n: int, offset: int) -> tuple[list, float]:
        out: list = [None] * n
        tasks = []
        t0 = time.perf_counter() + 0.05
        t0_unix.append(time.time() + 0.05)
        for i in range(n):
            due = t0 + i / a.rate
            delay = due - time.perf_counter() - SPIN_S
            if delay > 0:
                await asyncio.sleep(delay)
            while time.perf_counter() < due:   # the last SPIN_S: a wake-up is never that precise
                pass
            b = bodies[(offset + i) % len(bodies)]
            hd = heads(b)
            c = pool.get_idle()
            if c is not None:
                sent = time.perf_counter()
                c[1].write(hd + b)
                tasks.append(asyncio.ensure_future(one(pool, hd, b, due, out, i, c, sent)))
            else:
                tasks.append(asyncio.ensure_future(one(pool, hd, b, due, out, i)))
        # bounded: responses not read within --drain-seconds after the last send count as timeouts
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + n / a.rate + a.drain_seconds
                                                             - time.perf_counter()))
        now = time.perf_counter()
        for k, t in enumerate(tasks):
            if t in pending:
                t.cancel()
                out[k] = (now - (t0 + k / a.rate), float("nan"), -1, float("nan"))
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            pool.idle.clear()
            pool.opened = pool.in_use = 0
        return out, time.perf_counter() - t0

    t0_unix: list[float] = []   # each phase's start by the wall clock (to line the trace up with other logs)
    warm = int(a.rate * a.warmup_seconds)
    if warm:
        await phase(warm, 0)
    n = int(a.rate * a.seconds)
    pool.peak_in_use = pool.in_use
    out, wall = await phase(n, warm)
    lat = np.array([o[0] for o in out]) * 1e3
    if a.trace:   # one line per request: its due time from the start, latency and service time (ms)
        with open(a.trace, "w") as f:
            f.write("due_s,latency_ms,service_ms,status\n")
            f.writelines(f"{k / a.rate:.4f},{o[0] * 1e3:.4f},{o[1] * 1e3:.4f},{o[2]}\n" for k, o in enumerate(out))
    svc = np.array([o[1] for o in out]) * 1e3
    lag = np.array([o[3] for o in out]) * 1e3
    lag = lag[~np.isnan(lag)]
    statuses: dict[str, int] = {}
    for o in out:
        statuses[str(o[2])] = statuses.get(str(o[2]), 0) + 1
    ok = sum(1 for o in out if o[2] == 200)
    svc = svc[~np.isnan(svc)] if np.isnan(svc).any() else svc
    if not len(svc):
        svc = np.array([float("nan")])

    def pct(x: np.ndarray) -> dict:
        return {"p50_ms": float(np.percentile(x, 50)), "p95_ms": float(np.percentile(x, 95)),
                "p99_ms": float(np.percentile(x, 99)), "max_ms": float(x.max()), "mean_ms": float(x.mean())}

    return {"requests": n, "ok": ok, "statuses": statuses, "timeouts": statuses.get("-1", 0),
            "reconnects": pool.reconnects, "drain_seconds": a.drain_seconds, "target_rps": a.rate,
            "achieved_rps": ok / wall, "wall_seconds": wall, **pct(lat),
            "service": pct(svc), "send_lag": pct(lag) if len(lag) else None, "connections": pool.opened,
            "peak_in_flight": pool.peak_in_use, "t0_unix": t0_unix[-1]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/get-online-features")
    p.add_argument("--bodies", required=True, help="JSON lines, one request body each (cycled)")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--trace", help="write every timed request's due time, latency and status to this CSV")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup-seconds", type=float, default=3.0)
    p.add_argument("--drain-seconds", type=float, default=10.0,
                   help="after the last request is sent, wait this long for responses; the rest are timeouts "
                        "(status -1, latency = time waited: a lower bound)")
    p.add_argument("--max-conns", type=int, default=64)
    p.add_argument("--pre-conns", type=int, default=4)
    p.add_argument("--selector", choices=("select", "epoll"), default="select",
                   help="how the client's event loop waits (epoll: asyncio's default, millisecond timeouts)")
    a = p.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("loopback only")
    # select(2) sleeps to the microsecond; the default epoll selector rounds every timeout up to the next
    # millisecond, which would make each request's send up to 1 ms late and charge that to the server
    precise_timers()
    pauses: list[tuple[int, float]] = []   # (generation, seconds) of every collection the client makes
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((info["generation"], time.perf_counter() - started.pop()))
    gc.callbacks.append(on_gc)
    sel = selectors.SelectSelector if a.selector == "select" else selectors.EpollSelector
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(sel())) as r:
        res = r.run(run(a))
    res["client_gc"] = {"collections": len(pauses), "full": sum(1 for g, _ in pauses if g == 2),
                        "longest_ms": max((d for _, d in pauses), default=0.0) * 1e3}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
