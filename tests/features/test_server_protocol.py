"""`FastLaneProtocol` (fast_http.py) on real uvicorn servers on loopback: online reads answered by the
protocol itself, without an ASGI cycle, must look, count and log as under uvicorn's own protocol, and the
connection (keep-alive, pipelining, split and chunked bodies, HTTP/1.0) must behave the same."""
from __future__ import annotations

import json
import logging
import re
import socket
import time
from typing import Any, NamedTuple

import httpx
import pytest

from loopstack.features.server import create_app
from loopstack.fast_http import FastLaneProtocol
from loopstack.serving.local_server import LoopbackServer
from tests.features.test_server import PLAIN, WINS, as_columns, served_project  # noqa: F401

READ = "/get-online-features"
Q1 = {"features": WINS + PLAIN, "entities": {"author_id": [3, 0, 999, 5]}}
Q2 = {"features": ["plain:last_n"], "entity_rows": [{"author_id": 1}, {"author_id": 2}]}
BODIES = [
    Q1, Q2,
    {"features": ["wins:cnt_1h", "plain:last_label"], "entities": {"author_id": [1]}, "full_feature_names": True,
     "as_of": "2030-01-01T00:00:00+02:00"},
    {"features": ["wins:cnt_1h"], "entities": {"author_id": []}},
    {"features": ["wins:nope", "x:y"], "entities": {"author_id": [1]}},               # 404
    {"features": [], "entities": {"author_id": [1]}},                                 # 422
    {"features": ["wins:cnt_1h"], "entities": {"author_id": [1, 2], "b": [1]}},
    {"features": ["wins:cnt_1h"], "entity_rows": [{"user_id": 1}]},                   # invalid entities
    {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "as_of": "soon"},
    {"features": ["wins:cnt_1h"], "entities": {"author_id": list(range(10_001))}},   # over max_rows
    (b"{not json", "application/json"),
    (b'{"features": ["plain:last_n"], "entities": {"author_id": ["\xff"]}}', "application/json"),
    (b'{"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}}', "application/x-www-form-urlencoded"),
    (b"", "application/json"),
]


# -- servers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_app(served_project):  # noqa: F811
    """The app under FastLaneProtocol; `fast_app.handled` lists (method, path) of requests that reached ASGI."""
    app = create_app(served_project, reload_interval=0)
    app.handled = []
    inner = app.access.handle

    async def spy(scope: dict, receive: Any, send: Any) -> None:
        app.handled.append((scope["method"], scope["path"]))
        await inner(scope, receive, send)
    app.access.handle = spy
    return app


@pytest.fixture(scope="module")
def fast(fast_app):
    with LoopbackServer(fast_app, http=FastLaneProtocol, ready_path="/health") as srv:
        yield srv


@pytest.fixture(scope="module")
def plain(served_project):  # noqa: F811
    """The same app under uvicorn's own protocol ("auto": httptools), for comparison."""
    with LoopbackServer(create_app(served_project, reload_interval=0), ready_path="/health", http="auto") as srv:
        yield srv


@pytest.fixture()
def handled(fast_app) -> list:
    fast_app.handled.clear()
    return fast_app.handled


@pytest.fixture()
def access_lines():
    """The JSON lines written to the ``loopstack.access`` logger while the test runs."""
    lines: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))
    logger, handler = logging.getLogger("loopstack.access"), Collect(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- raw HTTP ---------------------------------------------------------------------------------------
class Resp(NamedTuple):
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def req(path: str, body: Any = None, method: str = "POST", version: str = "1.1", **headers: str) -> bytes:
    """One raw HTTP request (`body`: a dict sent as JSON, or bytes; headers given with _ for -)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    hs = {"host": "127.0.0.1", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if method == "POST" and "transfer-encoding" not in hs:
        hs = {"content-type": "application/json", "content-length": str(len(raw)), **hs}
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs.items()) + "\r\n"
    return head.encode() + raw


def connect(srv: LoopbackServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_responses(s: socket.socket, n: int, buf: bytearray | None = None) -> list[Resp]:
    """Read exactly `n` final responses (interim 1xx ones are skipped) from `s`."""
    buf = bytearray() if buf is None else buf
    out: list[Resp] = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].decode("latin-1").split("\r\n")
            _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
            hs = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
            size = int(hs.get("content-length", 0))
            if len(buf) >= end + 4 + size:
                body = bytes(buf[end + 4:end + 4 + size])
                del buf[:end + 4 + size]
                if int(status) >= 200:
                    out.append(Resp(int(status), reason, hs, body))
                continue
        chunk = s.recv(65536)
        assert chunk, f"the server closed the connection after {len(out)} of {n} responses"
        buf += chunk
    return out


def closed(s: socket.socket, timeout: float = 3.0) -> bool:
    """True when the server closes `s` (EOF) within `timeout` with nothing more sent."""
    s.settimeout(timeout)
    try:
        return s.recv(65536) == b""
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def no_rid(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


def metric(text: str, line_start: str) -> float:
    m = re.search("^" + re.escape(line_start) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def ask(srv: LoopbackServer, body: Any, **headers: str) -> httpx.Response:
    if isinstance(body, tuple):
        return httpx.post(srv.url + READ, content=body[0], headers={"content-type": body[1], **headers}, timeout=10)
    return httpx.post(srv.url + READ, json=body, headers=headers, timeout=10)


# -- answers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("i", range(len(BODIES)))
def test_fast_answers_equal_plain_uvicorn(fast, plain, handled, i):
    a, b = ask(fast, BODIES[i]), ask(plain, BODIES[i])
    assert (a.status_code, a.reason_phrase) == (b.status_code, b.reason_phrase), a.text
    assert no_rid(a.json()) == no_rid(b.json())
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    assert int(a.headers["content-length"]) == len(a.content)
    assert sorted(a.headers) == sorted(b.headers)        # date, server, content-length, content-type, x-request-id
    assert handled == []                                  # answered by the protocol, not the ASGI app


def test_reads_are_right_and_only_other_routes_reach_asgi(fast, served_project, handled):  # noqa: F811
    r = ask(fast, Q1)
    want = served_project.get_online_features(Q1["features"], [{"author_id": a} for a in Q1["entities"]["author_id"]])
    cols = as_columns(r.json())
    assert [cols[n]["values"] for n in want.features] == [[row[n] for row in want.rows] for n in want.features]
    assert r.json()["found"] == [True, True, False, True]
    ask(fast, Q2)
    httpx.post(fast.url + READ + "?debug=1", json=Q2)       # a query string is still the read route
    assert handled == []
    assert httpx.get(fast.url + "/health").status_code == 200
    assert httpx.get(fast.url + READ).status_code == 405     # GET: the ASGI way
    assert handled == [("GET", "/health"), ("GET", READ)]


def test_request_id_echoed_generated_or_replaced(fast):
    r = ask(fast, {"features": ["x:y"], "entities": {"author_id": [1]}}, **{"x-request-id": "trace-7.a:b"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == r.json()["request_id"] == "trace-7.a:b"
    ok = ask(fast, Q2)
    assert re.fullmatch(r"[0-9a-f]{32}", ok.headers["x-request-id"])
    assert ok.headers["x-request-id"] != ask(fast, Q2).headers["x-request-id"]
    for bad in ("has spaces in it", "x" * 129, "semi;colon"):
        r = ask(fast, {"features": ["x:y"], "entities": {"author_id": [1]}}, **{"x-request-id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
        assert r.json()["request_id"] == r.headers["x-request-id"]
    assert ask(fast, Q2, **{"x-request-id": "y" * 128}).headers["x-request-id"] == "y" * 128


def test_metrics_count_fast_reads_and_errors(fast):
    p = "loopstack_feature_server_"
    ok, e404, errs = (f'{p}requests_total{{path="{READ}",method="POST",status="200"}}',
                      f'{p}requests_total{{path="{READ}",method="POST",status="404"}}',
                      f'{p}errors_total{{path="{READ}",error="unknown_feature"}}')
    count, rows = f'{p}request_duration_seconds_count{{path="{READ}"}}', f"{p}entity_rows_total"
    before = httpx.get(fast.url + "/metrics").text
    for _ in range(5):
        assert ask(fast, Q2).status_code == 200
    assert ask(fast, {"features": ["wins:nope"], "entities": {"author_id": [1]}}).status_code == 404
    after = httpx.get(fast.url + "/metrics").text
    assert [metric(after, k) - metric(before, k) for k in (ok, e404, errs, count, rows)] == [5, 1, 1, 6, 10]


def wait_for(lines: list[dict], n: int, timeout: float = 3.0) -> None:
    """The access line is written just after the answer: wait until `n` lines are there."""
    deadline = time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_access_log_has_one_line_per_fast_read(fast, access_lines):
    ask(fast, Q1, **{"x-request-id": "log-1"})
    ask(fast, {"features": ["wins:nope"], "entities": {"author_id": [1]}}, **{"x-request-id": "log-2"})
    ask(fast, Q2, **{"x-request-id": "log-3", "x-forwarded-for": "10.9.8.7"})     # the ASGI way
    wait_for(access_lines, 3)
    time.sleep(0.05)
    by_id = {x["request_id"]: x for x in access_lines}
    assert [x["request_id"] for x in access_lines] == ["log-1", "log-2", "log-3"]
    one = by_id["log-1"]
    assert (one["method"], one["path"], one["status"], one["rows"], one["features"]) == ("POST", READ, 200, 4, 8)
    assert one["client"] == "127.0.0.1" and one["duration_ms"] > 0 and "error" not in one
    two = by_id["log-2"]
    assert (two["status"], two["error"], two["path"]) == (404, "unknown_feature", READ)
    assert by_id["log-3"]["client"] == "10.9.8.7" and by_id["log-3"]["status"] == 200   # proxy headers applied


# -- the connection ---------------------------------------------------------------------------------
def test_keep_alive_answers_in_order_on_one_connection(fast, plain, handled):
    want = [ask(plain, q).json() for q in (Q1, Q2)]
    with connect(fast) as s:
        for i in range(6):
            s.sendall(req(READ, (Q1, Q2)[i % 2], x_request_id=f"ka-{i}"))
            (r,) = read_responses(s, 1)
            assert (r.status, r.headers["x-request-id"]) == (200, f"ka-{i}")
            assert r.json() == want[i % 2] and "connection" not in r.headers
        s.sendall(req("/health", method="GET"))
        assert read_responses(s, 1)[0].json()["status"] == "ok"
        s.sendall(req(READ, Q2))
        assert read_responses(s, 1)[0].json() == want[1]
    assert handled == [("GET", "/health")]


@pytest.mark.parametrize("version, extra", [("1.0", {}), ("1.1", {"connection": "close"})])
def test_a_request_without_keep_alive_is_answered_then_closed(fast, plain, version, extra):
    with connect(fast) as s:
        s.sendall(req(READ, Q1, version=version, **extra))
        (r,) = read_responses(s, 1)
        assert r.status == 200 and r.headers["connection"] == "close"
        assert r.json() == ask(plain, Q1).json()
        assert closed(s)


def test_pipelined_requests_are_answered_in_order(fast, plain, handled):
    want = [ask(plain, Q1).json(), ask(plain, Q2).json()]
    with connect(fast) as s:
        s.sendall(req(READ, Q1, x_request_id="p-1") + req("/health", method="GET", x_request_id="p-2")
                  + req(READ, Q2, x_request_id="p-3"))
        a, h, b = read_responses(s, 3)
        assert [x.headers["x-request-id"] for x in (a, h, b)] == ["p-1", "p-2", "p-3"]
        assert (a.json(), h.json()["status"], b.json()) == (want[0], "ok", want[1])
        handled.clear()
        s.sendall(req(READ, Q2, x_request_id="q-1") + req(READ, Q1, x_request_id="q-2")
                  + req(READ, {"features": ["x:y"], "entities": {"author_id": [1]}}, x_request_id="q-3"))
        rs = read_responses(s, 3)
        assert [(r.status, r.headers["x-request-id"]) for r in rs] == [(200, "q-1"), (200, "q-2"), (404, "q-3")]
        assert [rs[0].json(), rs[1].json()] == want[::-1]
    assert handled == []     # pipelined reads with nothing in flight are all answered by the protocol


def test_split_and_chunked_bodies(fast, plain, handled):
    want = ask(plain, Q1).json()
    raw = req(READ, Q1)
    head, body = raw.split(b"\r\n\r\n", 1)
    with connect(fast) as s:
        for piece in (head[:7], head[7:30], head[30:] + b"\r\n\r\n", body[:10], body[10:]):   # URL split, too
            s.sendall(piece)
            time.sleep(0.02)
        assert read_responses(s, 1)[0].json() == want
        data = json.dumps(Q1).encode()
        chunked = req(READ, method="POST", transfer_encoding="chunked", content_type="application/json")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[:5], data[5:40], data[40:])) + b"0\r\n\r\n"
        s.sendall(chunked + chunks[:12])
        time.sleep(0.02)
        s.sendall(chunks[12:])
        (r,) = read_responses(s, 1)
        assert r.status == 200 and r.json() == want
    assert handled == []


def test_expect_continue_and_forwarded_requests_go_the_asgi_way(fast, plain, handled):
    want = ask(plain, Q2).json()
    data = json.dumps(Q2).encode()
    with connect(fast) as s:
        raw = req(READ, Q2, expect="100-continue")
        s.sendall(raw[:-len(data)])
        interim = bytearray()
        while b"\r\n\r\n" not in interim:
            interim += s.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim     # asked for by the app reading the body
        s.sendall(data)
        (r,) = read_responses(s, 1, interim[interim.index(b"\r\n\r\n") + 4:])
        assert r.status == 200 and r.json() == want
    for name in ("x-forwarded-for", "x-forwarded-proto", "forwarded"):
        r = ask(fast, Q2, **{name: "10.1.2.3" if name == "x-forwarded-for" else
                             ("https" if name == "x-forwarded-proto" else "for=10.1.2.3")})
        assert r.status_code == 200 and r.json() == want
    assert handled == [("POST", READ)] * 4


@pytest.mark.parametrize("method, path", [("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/nope"),
                                          ("POST", READ + "/"), ("POST", "/get%2Donline-features"),
                                          ("GET", "/metrics")])
def test_other_routes_answer_as_under_plain_uvicorn(fast, plain, method, path):
    a, b = (httpx.request(method, srv.url + path, json=Q2 if method == "POST" else None, timeout=10)
            for srv in (fast, plain))
    assert (a.status_code, a.headers.get("content-type")) == (b.status_code, b.headers.get("content-type"))
    assert sorted(a.headers) == sorted(b.headers)
    if path == "/health":
        assert {**a.json(), "uptime_seconds": 0} == {**b.json(), "uptime_seconds": 0}
    elif path == "/metrics":
        assert "# TYPE loopstack_feature_server_requests_total counter" in a.text
    elif a.headers.get("content-type") == "application/json":
        assert no_rid(a.json()) == no_rid(b.json())


# -- connection housekeeping, against uvicorn's own protocol ------------------------------------------
# Both were found in FastLaneProtocol by these tests and fixed: the keep-alive timer armed by a fast answer
# must not run while a request pipelined behind it is parsed, and fast answers must wait for a client that
# does not read them (uvicorn's own protocol does both).
SERVERS = ["plain", "fast"]


@pytest.mark.parametrize("which", SERVERS)
def test_a_request_pipelined_behind_a_read_is_not_cut_by_the_idle_timeout(request, which):
    srv = request.getfixturevalue(which)
    before, srv.server.config.timeout_keep_alive = srv.server.config.timeout_keep_alive, 0.2   # new connections
    try:
        second = req(READ, Q2, x_request_id="late")
        with connect(srv) as s:
            s.sendall(req(READ, Q1, x_request_id="first") + second[:-5])    # the 2nd body's tail comes later
            time.sleep(0.5)
            s.sendall(second[-5:])
            rs = read_responses(s, 2)
        assert [(r.status, r.headers["x-request-id"]) for r in rs] == [(200, "first"), (200, "late")]
    finally:
        srv.server.config.timeout_keep_alive = before


@pytest.mark.parametrize("which", SERVERS)
def test_pipelined_reads_not_read_by_the_client_are_not_buffered_without_bound(request, which):
    srv = request.getfixturevalue(which)
    big = req(READ, {"features": WINS + PLAIN, "entities": {"author_id": list(range(300))}})   # ~58 kB answers
    start = srv.app.state.server.metrics.requests.get((READ, "POST", 200), 0)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # a slow reader: a small window
    s.connect(("127.0.0.1", srv.port))
    try:
        s.setblocking(False)
        data, sent, deadline = big * 200, 0, time.monotonic() + 5
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += s.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        metrics, peak = srv.app.state.server.metrics.requests, 0
        done, moved, deadline = -1, time.monotonic(), time.monotonic() + 5
        while time.monotonic() < min(deadline, moved + 0.3) and done < start + 200:   # until all or no progress
            peak = max([peak, *(c.transport.get_write_buffer_size() for c in srv.server.server_state.connections)])
            if metrics.get((READ, "POST", 200), 0) != done:
                done, moved = metrics.get((READ, "POST", 200), 0), time.monotonic()
            time.sleep(0.02)
        s.setblocking(True)
        s.settimeout(10)
        assert all(r.status == 200 for r in read_responses(s, 200))
        assert peak < 1_000_000, f"{peak} bytes of answers buffered in the server for one connection"
    finally:
        s.close()


