"""The feature server's hot path (server_reads.py): the bare-ASGI route against the FastAPI route,
hand validation against pydantic's, and the answers for bodies the fast parser hands on."""
from __future__ import annotations

import gc
import warnings

import pytest

from loopstack.features.server import create_app, tune_gc
from loopstack.features.server_models import GetOnlineFeaturesRequest, ReadRequest, plain_request, us_to_iso
from loopstack.features.server_reads import parse_body
from tests.features.test_server import PLAIN, WINS, as_columns, client, post, served_project  # noqa: F401

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

BODIES = [
    {"features": WINS + PLAIN, "entities": {"author_id": [3, 0, 999, 5, 3, "3", None]}},
    {"features": PLAIN, "entity_rows": [{"author_id": 1, "x": 2}, {"author_id": 42}]},
    {"features": ["wins:cnt_1h", "plain:last_n"], "entities": {"author_id": [1]}, "full_feature_names": True,
     "as_of": "2030-01-01T00:00:00+02:00"},
    {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "full_feature_names": "true"},   # coerced
    {"features": ["wins:cnt_1h"], "entities": {"author_id": []}},
    {"features": ["wins:nope", "x"], "entities": {"author_id": [1]}},
    {"features": ["wins:cnt_1h"], "entities": {"author_id": [1, 2], "b": [1]}},
    {"features": ["wins:cnt_1h"], "entity_rows": [{"author_id": 1.5}]},
    {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "as_of": "soon"},
    {"features": [1], "entities": {"author_id": [1]}},
]


@pytest.mark.parametrize("i", range(len(BODIES)))
def test_the_bare_asgi_route_answers_as_the_fastapi_route(served_project, i):  # noqa: F811
    """The middleware serves POST /get-online-features itself; the FastAPI route (what answers when the
    app is mounted under a prefix, so the middleware does not recognise the path) must answer alike."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    app = create_app(served_project, reload_interval=0)
    fast, mounted = TestClient(app), TestClient(Starlette(routes=[Mount("/fs", app=app)]))
    a = fast.post("/get-online-features", json=BODIES[i])
    b = mounted.post("/fs/get-online-features", json=BODIES[i])
    ja, jb = a.json(), b.json()
    ja.pop("request_id", None)
    jb.pop("request_id", None)
    assert (a.status_code, ja) == (b.status_code, jb)
    assert a.headers["content-type"] == b.headers["content-type"] == "application/json"


@pytest.mark.parametrize("obj", BODIES + [
    {"features": ["a:b"], "entities": {"k": [1]}, "entity_rows": None, "as_of": None},
    {"features": ["a:b"], "entities": None, "entity_rows": []},
    {"features": ["a:b"], "entities": {"k": [1]}, "full_feature_names": None},
    {"features": ["a:b"], "entities": {"k": [1]}, "extra": 1},
    {"features": ["a:b"], "entity_rows": [{"k": 1}, [1]]},
    {"features": ["a:b"], "entities": {"k": 1}},
    {"features": ["a:b"], "entities": {}},
    {"features": [], "entities": {"k": [1]}},
    [1], "x", None,
])
def test_hand_validation_accepts_what_pydantic_accepts_unchanged(obj):
    fast = plain_request(obj)
    try:
        model = GetOnlineFeaturesRequest.model_validate(obj, from_attributes=True)
    except ValueError:
        assert fast is None
        return
    if fast is not None:   # accepted by hand: exactly what pydantic makes of it
        assert fast == ReadRequest.of(model)


def test_bodies_the_fast_parser_hands_on(client):  # noqa: F811
    def raw(body: bytes, ct: str = "application/json"):
        return client.post("/get-online-features", content=body, headers={"content-type": ct})
    # integers beyond 64 bits and NaN: parsed by json.loads, the key echoed exactly (was a 500 with orjson)
    r = raw(b'{"features": ["plain:last_n"], "entities": {"author_id": [123456789012345678901234, NaN, 1]}}')
    assert r.status_code == 200, r.text
    assert as_columns(r.json())["author_id"]["values"][0] == 123456789012345678901234
    assert r.json()["found"] == [False, False, True]
    r = raw('{"features": ["plain:last_n"], "entities": {"author_id": [1]}}'.encode("utf-16"))
    assert r.status_code == 200   # json.loads reads UTF-16 too, as FastAPI did
    r = raw(b'{"features": ["plain:last_n"], "entities": {"author_id": ["\xff"]}}')
    assert r.status_code == 400 and r.json()["error"] == "invalid_request" and "UTF-8" in r.json()["detail"]
    r = raw(b'{"features": ["plain:last_n"], "entities": {"author_id": [1]}}', "application/vnd.x+json; charset=utf-8")
    assert r.status_code == 200
    assert isinstance(parse_body(b"", "application/json"), list)


def test_tune_gc_freezes_the_startup_heap_and_raises_the_threshold(served_project):  # noqa: F811
    before = gc.get_threshold()
    try:
        with TestClient(create_app(served_project, reload_interval=0, server_gc=True)) as c:   # lifespan runs
            assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] >= 20_000
            assert post(c, {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}}).status_code == 200
        tune_gc(100)   # never lowers a higher threshold
        assert gc.get_threshold()[0] >= 20_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_us_to_iso_is_datetime_isoformat():
    """The hand-made formatter writes what ``datetime.isoformat`` writes (fraction only when non-zero)."""
    import random
    from datetime import datetime, timedelta, timezone
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(7)
    times = [rng.randrange(-62135596800000000, 253402300800000000) for _ in range(3000)]
    times += [t // 1_000_000 * 1_000_000 for t in times[:200]]   # whole seconds: no fraction written
    times += [0, -1, 1, 999_999, 86_399_999_999, 1_718_000_000_000_000]
    for us in times:
        assert us_to_iso(us) == (epoch + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z"), us
    assert us_to_iso(None) is None
    with pytest.raises(OverflowError):
        us_to_iso(253402300800000000)   # past year 9999, as datetime refuses it


def test_online_reads_skip_fastapi_and_other_errors_keep_the_request_id(served_project):  # noqa: F811
    """``POST /get-online-features`` is answered before FastAPI's stack is even built; a route that
    fails inside FastAPI still answers 500 with the request id, and is counted and logged."""
    app = create_app(served_project, reload_interval=0)
    c = TestClient(app, raise_server_exceptions=False)
    r = post(c, {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}}, headers={"x-request-id": "hot-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "hot-1"
    assert app.middleware_stack is None   # FastAPI/Starlette never ran

    def broken() -> dict:
        raise RuntimeError("store gone")
    online = app.state.server.online
    online.freshness, works = broken, online.freshness
    r = c.get("/freshness", headers={"x-request-id": "cold-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "cold-1"
    online.freshness = works
    text = c.get("/metrics").text
    assert 'requests_total{path="/freshness",method="GET",status="500"} 1' in text
    assert 'errors_total{path="/freshness",error="internal"} 1' in text
    assert 'requests_total{path="/get-online-features",method="POST",status="200"} 1' in text
