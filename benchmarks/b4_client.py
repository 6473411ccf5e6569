"""B4 closed-loop HTTP load generator (loopback only).

C connections (HTTP/1.1 keep-alive, one per simulated client) each send a request, wait for the
whole response, and send the next at once: concurrency is exactly C requests in flight. Requests are
pre-encoded (headers + JSON body, cycled from a JSON-lines file), responses are parsed with a
minimal asyncio Protocol on uvloop, so the client costs little CPU; its own ceiling is measured
against `--serve-trivial` (a fixed-answer server) and its CPU use is reported with every run.

A warm-up phase (not recorded) is followed by the measured window: throughput is the responses
completed inside the window per second; latency is send -> last byte of the response, for those.
Any status other than 200 counts as an error (by status; 0 = connection error, -1 = timeout). The
run is bounded: after the window, in-flight requests get `--drain-seconds` and are then dropped.

    b4_client.py --port P --path /predict --bodies FILE.jsonl --concurrency 64 --seconds 15 \\
                 [--warmup-seconds 3] [--stats-url http://127.0.0.1:P/metrics]
    b4_client.py --serve-trivial --port P          # the fixed-answer server for the ceiling check

Prints one JSON line. With --stats-url, the body of that URL (GET) at the start and at the end of the
measured window is included (`stats_before` / `stats_after`), for the server's batch-size counters.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import urllib.request

import numpy as np

try:
    import uvloop
except ImportError:  # pragma: no cover - plain asyncio still works, with a lower ceiling
    uvloop = None

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Conn(asyncio.Protocol):
    """One keep-alive connection running the closed loop: send, read the full response, repeat."""

    def __init__(self, run: "Run", offset: int) -> None:
        self.run, self.i = run, offset
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.need = -1            # body bytes still expected (-1: reading headers; -2: chunked)
        self.status = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        r = self.run
        if time.perf_counter() >= r.t_end or r.stopping:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        r.inflight[self] = self.sent
        self.transport.write(r.requests[self.i % len(r.requests)])
        self.i += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need == -1:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                del self.buf[:end + 4]
                self.status = int(head[9:12])
                k = head.find(b"content-length:")
                if k >= 0:
                    self.need = int(head[k + 15:].split(b"\r\n", 1)[0])
                elif b"transfer-encoding: chunked" in head:
                    self.need = -2
                else:
                    self.need = 0
            if self.need == -2:  # chunked: complete when the terminating 0-chunk is in
                end = self.buf.find(b"0\r\n\r\n")
                if end < 0 or (end > 0 and self.buf[end - 2:end] != b"\r\n"):
                    return
                del self.buf[:end + 5]
            else:
                if len(self.buf) < self.need:
                    return
                del self.buf[:self.need]
            self.need = -1
            self.done(self.status)
            if not self.transport or self.transport.is_closing():
                return
            self.send()
            if not self.buf:
                return

    def done(self, status: int) -> None:
        now = time.perf_counter()
        r = self.run
        r.inflight.pop(self, None)
        if r.t_start <= now <= r.t_end:
            r.record(now - self.sent, status)

    def connection_lost(self, exc) -> None:
        r = self.run
        if self in r.inflight:   # the server closed it mid-request
            r.inflight.pop(self, None)
            if r.t_start <= time.perf_counter() <= r.t_end:
                r.record(time.perf_counter() - self.sent, 0)
        if not self.closed.done():
            self.closed.set_result(None)


class Run:
    def __init__(self, a) -> None:
        self.a = a
        bodies = [ln.rstrip("\n").encode() for ln in open(a.bodies) if ln.strip()]
        self.requests = [(f"POST {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
        self.lat: list[float] = []
        self.statuses: dict[int, int] = {}
        self.inflight: dict[Conn, float] = {}
        self.stopping = False
        self.t_start = self.t_end = float("inf")
        self.reconnects = 0

    def record(self, latency: float, status: int) -> None:
        if status == 200:
            self.lat.append(latency)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def client(self, k: int) -> None:
        """One simulated client: a connection running the closed loop, reopened if the server closes it."""
        loop = asyncio.get_running_loop()
        offset = k * 7919
        while time.perf_counter() < self.t_end and not self.stopping:
            try:
                _, conn = await loop.create_connection(lambda o=offset: Conn(self, o), self.a.host, self.a.port)
            except OSError:
                if self.t_start <= time.perf_counter() <= self.t_end:
                    self.record(0.0, 0)
                await asyncio.sleep(0.05)
                self.reconnects += 1
                continue
            await conn.closed
            offset = conn.i
            if time.perf_counter() < self.t_end:
                self.reconnects += 1

    async def watchdog(self) -> None:
        """Requests waiting longer than --timeout count as timeouts (-1); their connection is reopened."""
        while not self.stopping:
            await asyncio.sleep(0.25)
            now = time.perf_counter()
            for conn, sent in list(self.inflight.items()):
                if now - sent > self.a.timeout:
                    self.inflight.pop(conn, None)
                    if self.t_start <= now <= self.t_end:
                        self.record(now - sent, -1)
                    if conn.transport:
                        conn.transport.close()


def fetch(url: str | None) -> str | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return f"ERROR {exc!r}"


async def run(a) -> dict:
    r = Run(a)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    r.t_start, r.t_end = t0 + a.warmup_seconds, t0 + a.warmup_seconds + a.seconds
    tasks = [asyncio.ensure_future(r.client(k)) for k in range(a.concurrency)]
    dog = asyncio.ensure_future(r.watchdog())
    await asyncio.sleep(max(0.0, r.t_start - time.perf_counter()))
    cpu0, t_cpu0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    before = await loop.run_in_executor(None, fetch, a.stats_url) if a.stats_url else None
    await asyncio.sleep(max(0.0, r.t_end - time.perf_counter()))
    after = await loop.run_in_executor(None, fetch, a.stats_url) if a.stats_url else None
    cpu1, t_cpu1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    _, pending = await asyncio.wait(tasks, timeout=a.drain_seconds)
    r.stopping = True
    for c in list(r.inflight):
        if c.transport:
            c.transport.close()
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, dog, return_exceptions=True)
    lat = np.array(r.lat) * 1e3 if r.lat else np.array([float("nan")])
    ok = len(r.lat)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    errors = sum(n for s, n in r.statuses.items() if s != 200)
    return {"concurrency": a.concurrency, "seconds": a.seconds, "ok": ok, "errors": errors,
            "statuses": {str(k): v for k, v in sorted(r.statuses.items())},
            "throughput_rps": ok / a.seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)), "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "mean_ms": float(lat.mean()), "reconnects": r.reconnects,
            "client_cpu_fraction": cpu / max(1e-9, t_cpu1 - t_cpu0),
            "event_loop": "uvloop" if uvloop else "asyncio", "stats_before": before, "stats_after": after}


# -------------------------------------------------------------------- trivial server ----------
class Trivial(asyncio.Protocol):
    """Answers every request (any method/path, Content-Length bodies) with a fixed small JSON."""
    RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n[0.9067440988097513]"

    def connection_made(self, transport) -> None:
        self.t, self.buf = transport, bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            k = head.find(b"content-length:")
            n = int(head[k + 15:].split(b"\r\n", 1)[0]) if k >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            del self.buf[:end + 4 + n]
            self.t.write(self.RESP)


async def serve_trivial(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Trivial, host, port, backlog=1024)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/predict")
    p.add_argument("--bodies", help="JSON lines, one request body each (cycled)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup-seconds", type=float, default=3.0)
    p.add_argument("--drain-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=10.0, help="per request; longer counts as a timeout (-1)")
    p.add_argument("--stats-url", help="GET at the start and end of the measured window (server counters)")
    p.add_argument("--serve-trivial", action="store_true", help="run the fixed-answer server instead")
    a = p.parse_args()
    if a.host not in LOOPBACK:
        p.error("loopback only")
    if a.seconds <= 0 or a.seconds > 600 or a.concurrency < 1 or a.concurrency > 1024:
        p.error("--seconds must be in (0, 600] and --concurrency in [1, 1024]")
    if uvloop is not None:
        uvloop.install()
    if a.serve_trivial:
        asyncio.run(serve_trivial(a.host, a.port))
        return
    if not a.bodies:
        p.error("--bodies is required")
    print(json.dumps(asyncio.run(run(a))), flush=True)
    os._exit(0)  # do not wait for the executor thread of a stats fetch that timed out


if __name__ == "__main__":
    main()
