"""The model server under `FastLaneProtocol` (what `loopstack serve` runs) on real HTTP on loopback:
predictions answered by the protocol with no ASGI cycle must answer, count and log as under uvicorn's own
protocol; a request in flight on a connection keeps its place (pipelining), survives a disconnect and
closes the connection when asked."""
from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from loopstack.cli import app

from loopstack.serving.app import create_app
from loopstack.serving.config import ModelSpec
from loopstack.serving.local_server import LoopbackServer
from tests.features.test_server_protocol import access_lines, closed, connect, read_responses, req  # noqa: F401
from tests.integration.serving_env import (ConstantModel, SIGNATURE, SlowModel, body, config, fit_model,
                                           make_project, metric, register)

INST = [body(author=a, n_urls=a % 3) for a in (1, 2, 7)]
ROWS = {"columns": ["author_id", "text", "n_urls", "new_account"],
        "rows": [[1, "free prize", 2, 1], [2, "hello there", 0, 0]]}
CASES: list[tuple[str, Any, str]] = [   # (path, body: dict or raw bytes, content type)
    ("/v1/models/spam:predict", body(author=1), "application/json"),
    ("/v1/models/spam:predict?verbose=1", body(author=2), "application/json"),
    ("/v1/models/spam:predict_batch", {"instances": INST}, "application/json"),
    ("/v1/models/spam:predict_batch", ROWS, "application/json"),
    ("/v1/models/sp%61m:predict", body(author=3), "application/json"),                  # escaped: ASGI
    ("/v1/models/nope:predict", body(author=1), "application/json"),                     # 404
    ("/v1/models/spam:predict", {"entities": {}, "fields": body()["fields"]}, "application/json"),  # no key
    ("/v1/models/spam:predict_batch", {"instances": [body()] * 65}, "application/json"),  # over the limit
    ("/v1/models/spam:predict", {"fields": []}, "application/json"),                     # pydantic 422
    ("/v1/models/spam:predict_batch", {"columns": ["author_id"], "rows": [[1, 2]]}, "application/json"),
    ("/v1/models/spam:predict", b"{not json", "application/json"),                       # 400
    ("/v1/models/spam:predict", json.dumps(body()).encode(), "text/plain"),              # content type
    ("/v1/models/spam:predict", b"", "application/json"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("serving-lane") / "proj")
    register(p, fit_model(0))
    slow = p.models.register("slow", SlowModel(ConstantModel(0.3), delay=0.4), signature=SIGNATURE)
    p.models.promote(slow.ref, "production", reason="test", override=True)
    yield p
    p.close()


LIMIT = 32 * 1024     # max_body_bytes of these servers


def _cfg() -> Any:
    return config(max_instances=64, log_predictions=False, model_budget_ms=10_000, max_body_bytes=LIMIT,
                  models=(ModelSpec("spam"), ModelSpec("slow")))


def _serve(project: Any, http: Any) -> LoopbackServer:
    app = create_app(project, _cfg())
    app.lane_calls = []
    start = app.fast_lane.start

    def spy(scope: dict, raw: bytes) -> Any:
        out = start(scope, raw)
        app.lane_calls.append((scope["path"], out is not None))
        return out
    app.fast_lane.start = spy
    srv = LoopbackServer(app, http=http).start()
    srv.app = app
    return srv


@pytest.fixture(scope="module")
def plain(project):
    """The same app under uvicorn's own protocol (the ASGI way)."""
    srv = _serve(project, "auto")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def answers(plain) -> list[tuple[int, dict, dict]]:
    """Every case under uvicorn's own protocol: (status, headers, JSON body)."""
    out = [_ask(plain, i) for i in range(len(CASES))]
    assert plain.app.lane_calls == []      # uvicorn's protocol never calls the lane
    return out


@pytest.fixture(scope="module")
def lane(project):
    srv = _serve(project, None)          # LoopbackServer's default: FastLaneProtocol
    yield srv
    srv.stop()


def _ask(srv: LoopbackServer, i: int) -> tuple[int, dict, dict]:
    path, b, ctype = CASES[i]
    raw = b if isinstance(b, bytes) else json.dumps(b).encode()
    r = httpx.post(srv.url + path, content=raw, headers={"content-type": ctype, "x-request-id": f"case-{i}"},
                   timeout=30)
    return r.status_code, dict(r.headers), r.json()


def _same(out: dict) -> dict:
    """A body without what differs between two runs of the same request (server-side latency)."""
    return {k: v for k, v in out.items() if k != "latency_ms"}


@pytest.mark.parametrize("i", range(len(CASES)))
def test_lane_answers_equal_plain_uvicorn(lane, answers, i):
    status, headers, got = _ask(lane, i)
    want_status, want_headers, want = answers[i]
    assert (status, _same(got)) == (want_status, _same(want))
    for h in ("content-type", "x-request-id", "retry-after"):
        assert headers.get(h) == want_headers.get(h), h


def test_the_lane_answers_well_formed_requests_and_declines_the_rest(lane):
    lane.app.lane_calls.clear()
    for i in range(len(CASES)):
        _ask(lane, i)
    took = {(path, ok) for path, ok in lane.app.lane_calls}
    assert ("/v1/models/spam:predict", True) in took and ("/v1/models/spam:predict_batch", True) in took
    assert ("/v1/models/nope:predict", True) in took        # answered (404) by the lane
    assert not any("%" in path for path, _ in lane.app.lane_calls)   # escaped paths go the ASGI way
    declined = sum(1 for _, ok in lane.app.lane_calls if not ok)
    assert declined == 5    # fields as a list; a short row; bad JSON; text/plain; empty body


def test_lane_requests_are_counted_and_logged(lane, access_lines):  # noqa: F811
    before = metric(httpx.get(lane.url + "/metrics").text, "loopstack_serving_http_requests_total",
                    path="predict", status="200")
    for i in (0, 5):
        _ask(lane, i)
    after = metric(httpx.get(lane.url + "/metrics").text, "loopstack_serving_http_requests_total",
                   path="predict", status="200")
    assert after == before + 1
    by_id = {x["request_id"]: x for x in access_lines}
    ok, missing = by_id["case-0"], by_id["case-5"]
    assert (ok["status"], ok["model"], ok["version"], ok["variant"]) == (200, "spam", 1, "production")
    assert (missing["status"], missing["error"]) == (404, "unknown_model")


def test_pipelined_requests_behind_one_in_flight_are_answered_in_order(lane):
    slow, fast = body(author=1), body(author=2)
    with connect(lane) as s:
        s.settimeout(10)
        s.sendall(req("/v1/models/slow:predict", slow, x_request_id="p-1")
                  + req("/v1/models/spam:predict", fast, x_request_id="p-2")
                  + req("/healthz", method="GET", x_request_id="p-3")
                  + req("/v1/models/spam:predict", fast, x_request_id="p-4"))
        rs = read_responses(s, 4)
    assert [(r.status, r.headers["x-request-id"]) for r in rs] == [(200, f"p-{i}") for i in range(1, 5)]
    assert rs[0].json()["prediction"] == pytest.approx(0.3) and rs[0].json()["model"] == "slow"
    assert rs[1].json()["prediction"] == rs[3].json()["prediction"]


@pytest.mark.parametrize("version, extra", [("1.0", {}), ("1.1", {"connection": "close"})])
def test_a_request_without_keep_alive_is_answered_then_closed(lane, version, extra):
    for path in ("/v1/models/spam:predict", "/v1/models/slow:predict"):    # answered now / later
        with connect(lane) as s:
            s.sendall(req(path, body(author=1), version=version, **extra))
            (r,) = read_responses(s, 1)
            assert r.status == 200 and r.headers["connection"] == "close"
            assert closed(s)


def test_a_client_that_leaves_mid_request_does_not_disturb_the_server(lane):
    with connect(lane) as s:
        s.sendall(req("/v1/models/slow:predict", body(author=1), x_request_id="gone"))
    time.sleep(0.6)                           # its answer is made after the connection closed
    with connect(lane) as s:
        s.sendall(req("/v1/models/slow:predict", body(author=1), x_request_id="next")
                  + req("/v1/models/spam:predict", body(author=1), x_request_id="next-2"))
        rs = read_responses(s, 2)
    assert [(r.status, r.headers["x-request-id"]) for r in rs] == [(200, "next"), (200, "next-2")]


def _big(n_bytes: int) -> bytes:
    """A well-formed :predict_batch body of at least `n_bytes`."""
    inst = body(author=1, text="x" * 200)
    n = n_bytes // len(json.dumps(inst)) + 1
    return json.dumps({"instances": [inst] * n}).encode()


@pytest.mark.parametrize("which", ["lane", "plain"])
def test_a_body_over_the_limit_gets_413_and_the_server_goes_on(request, which):
    srv = request.getfixturevalue(which)
    r = httpx.post(srv.url + "/v1/models/spam:predict_batch", content=_big(LIMIT + 1),
                   headers={"content-type": "application/json", "x-request-id": "big-1"}, timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large" and str(LIMIT) in r.json()["detail"]
    assert r.headers["x-request-id"] == "big-1" == r.json()["request_id"]
    assert "--max-body-mb" in r.json()["detail"]
    assert _ask(srv, 0)[0] == 200


def test_the_lane_refuses_a_chunked_body_once_it_passes_the_limit_and_closes_after_it(lane):
    raw = _big(LIMIT * 2)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (raw[i:i + 4096] for i in range(0, len(raw), 4096)))
    with connect(lane) as s:
        s.sendall(req("/v1/models/spam:predict_batch", transfer_encoding="chunked", content_type="application/json",
                      x_request_id="big-2") + chunks + b"0\r\n\r\n")
        (r,) = read_responses(s, 1)
        assert (r.status, r.headers["connection"], r.json()["error"]) == (413, "close", "payload_too_large")
        assert closed(s)


def test_a_body_at_the_limit_is_read(lane):
    raw = _big(LIMIT - 2000)
    raw = raw[:-1] + b" " * (LIMIT - len(raw)) + b"}"       # exactly LIMIT bytes
    assert len(raw) == LIMIT
    r = httpx.post(lane.url + "/v1/models/spam:predict_batch", content=raw,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "limit is 64" in r.json()["detail"]   # read and checked: too many instances


@pytest.mark.parametrize("mb", ["0", "-1"])
def test_serve_refuses_a_body_limit_that_is_not_positive(tmp_path, mb):
    out = CliRunner().invoke(app, ["serve", "-p", str(tmp_path), "--model", "spam", "--max-body-mb", mb])
    assert out.exit_code == 2 and "--max-body-mb must be a positive number of MiB" in out.output
