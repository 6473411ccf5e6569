"""The feature server's body size limit (`max_body_bytes`, `--max-body-mb`) over real HTTP on loopback:
a larger body gets 413 under FastLaneProtocol and under uvicorn's own protocol, and is not buffered."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loopstack.cli import app as cli
from loopstack.fast_http import FastLaneProtocol
from loopstack.features.server import create_app
from loopstack.serving.local_server import LoopbackServer
from tests.features.test_server import served_project  # noqa: F401
from tests.features.test_server_protocol import Q2, READ, ask, closed, connect, read_responses, req


@pytest.fixture(scope="module", params=["lane", "plain"])
def small(served_project, request):  # noqa: F811
    """Servers that read bodies of at most 4 KiB: under FastLaneProtocol and under uvicorn's own."""
    app = create_app(served_project, reload_interval=0, max_body_bytes=4096)
    with LoopbackServer(app, ready_path="/health", http=FastLaneProtocol if request.param == "lane" else "auto") as srv:
        srv.kind = request.param
        yield srv


def test_a_body_over_the_limit_gets_413_and_the_server_goes_on(small):
    big = {"features": ["plain:last_n"], "entities": {"author_id": list(range(2000))}}   # ~10 KB
    r = ask(small, big, **{"x-request-id": "big-1"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large" and "4096" in r.json()["detail"]
    assert r.headers["x-request-id"] == "big-1" == r.json()["request_id"]
    assert ask(small, Q2).status_code == 200
    if small.kind == "lane":   # a chunked body is refused once it passes the limit; the connection closes after it
        data = json.dumps(big).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[i:i + 1000] for i in range(0, len(data), 1000)))
        with connect(small) as s:
            s.sendall(req(READ, method="POST", transfer_encoding="chunked", content_type="application/json")
                      + chunks + b"0\r\n\r\n")
            (r2,) = read_responses(s, 1)
            assert (r2.status, r2.headers["connection"]) == (413, "close")
            assert closed(s)


@pytest.mark.parametrize("args, message", [
    (["--max-body-mb", "0"], "--max-body-mb must be a positive number of MiB"),
    (["--max-body-mb", "inf"], "--max-body-mb must be a positive number of MiB"),      # was OverflowError
    (["--reload-interval", "-1"], "--reload-interval must be a finite number of seconds >= 0"),  # was: never
    (["--reload-interval", "nan"], "--reload-interval must be a finite number of seconds >= 0"),
    (["--log-level", "loud"], "--log-level 'loud' is not a log level"),                # was KeyError from uvicorn
])
def test_features_serve_refuses_options_it_cannot_honour(tmp_path, args, message):
    out = CliRunner().invoke(cli, ["features", "serve", "-p", str(tmp_path), *args])
    assert out.exit_code == 2 and message in out.output, out.output


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "0"])
def test_features_serve_refuses_a_port_out_of_range(tmp_path, port):
    # 99999 used to bind 99999 % 65536 = 34463 while the log said 99999
    out = CliRunner().invoke(cli, ["features", "serve", "-p", str(tmp_path), "--port", port])
    assert out.exit_code == 2 and "Invalid value for '--port'" in out.output, out.output
