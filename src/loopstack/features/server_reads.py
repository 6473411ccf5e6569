"""``POST /get-online-features`` of the feature server: body parsing, the read, the JSON answer.

The hot path of the server, so it avoids per-request framework work: the body is parsed with
orjson and checked by `server_models.plain_request` (pydantic only sees bodies that check does
not accept as they are, so both accept, coerce and refuse exactly the same bodies, with FastAPI's
error shapes); Feast's columnar ``entities`` are read column-wise (`OnlineFeatures.get_online_columns`)
and answered without a dict per row. `FeatureReads.asgi` serves the route as a bare ASGI app (the
server's middleware dispatches to it before FastAPI's routing); the FastAPI route declared for the
OpenAPI spec calls the same `FeatureReads.handle`.
"""
from __future__ import annotations

import functools
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pydantic import ValidationError

from loopstack.asgi import MAX_BODY_BYTES, BodyTooLarge, read_body, too_large_detail
from loopstack.errors import FeatureReferenceError, LoopstackError, RetrievalError
from loopstack.features.online.partials import has_long_int
from loopstack.features.online.service import OnlineColumns
from loopstack.features.online.state import StateError
from loopstack.features.retrieval import resolve
from loopstack.features.server_models import GetOnlineFeaturesRequest, ReadRequest, plain_request, us_to_iso

if TYPE_CHECKING:
    from loopstack.features.online.service import OnlineFeatures

log = logging.getLogger("loopstack.features.server")
JSON_HEADERS = (b"content-type", b"application/json")


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).replace("NaN", "null").encode()


try:
    import orjson
    _loads: Callable[[bytes], Any] | None = orjson.loads

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes (NaN as null)."""
        try:
            return orjson.dumps(obj)
        except TypeError:   # e.g. an entity key beyond 64 bits, echoed back
            return _std_dumps(obj)
except ImportError:  # pragma: no cover - orjson is optional; NaN then becomes null by hand
    _loads = None
    dumps = _std_dumps


def error_body(status: int, code: str, detail: str, rid: str | None, st: dict | None = None,
               **extra: Any) -> tuple[int, bytes]:
    """An error answer (`ErrorResponse`); the code is noted in the request state `st` for logs and metrics."""
    if st is not None:
        st["error"] = code
    body = {"error": code, "detail": detail, "request_id": rid, **{k: v for k, v in extra.items() if v is not None}}
    return status, dumps(body)


def store_unavailable(exc: Exception, rid: str | None, st: dict | None) -> tuple[int, bytes]:
    """The 503 answer when the online store cannot be reached (a state to retry, not a bug)."""
    return error_body(503, "store_unavailable", f"the online store cannot be read now ({type(exc).__name__}: "
                      f"{exc}); check that it is up and reachable (`online` in loopstack.yaml), then retry",
                      rid, st)


def invalid_body(errors: Sequence[Mapping[str, Any]], content_type: str | None, rid: str | None,
                 st: dict | None) -> tuple[int, bytes]:
    """The 422 answer for validation errors (FastAPI's ``loc``/``msg``/``type`` shape)."""
    errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)
    if "json" not in (content_type or ""):
        text += " (send the body as JSON with the header content-type: application/json)"
    return error_body(422, "invalid_request", f"malformed request: {text}", rid, st, errors=errs)


@functools.lru_cache(maxsize=64)
def is_json(content_type: str | None) -> bool:
    """FastAPI's rule: the body is JSON if the content type is application/json or application/*+json."""
    if not content_type:
        return False
    main, _, sub = content_type.split(";", 1)[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def parse_body(raw: bytes, content_type: str | None) -> ReadRequest | list[dict] | str:
    """The request, the validation errors (FastAPI's shape: ``loc`` starts with "body"), or why the
    body could not be parsed at all (a 400, as FastAPI answers)."""
    if not raw:
        return [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
    obj: Any = raw
    if is_json(content_type):
        try:   # orjson reads integers beyond 64 bits as floats, and refuses NaN: those go to json.loads
            obj = _loads(raw) if _loads is not None and not has_long_int(raw) else json.loads(raw)
        except ValueError:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                return [{"loc": ["body", exc.pos], "msg": "JSON decode error", "type": "json_invalid"}]
            except Exception as exc:   # not UTF-8/16/32, nested too deep
                return f"the body could not be parsed ({type(exc).__name__}): send UTF-8 JSON"
    req = plain_request(obj)
    if req is not None:
        return req
    try:
        return ReadRequest.of(GetOnlineFeaturesRequest.model_validate(obj, from_attributes=True))  # as FastAPI
    except ValidationError as exc:
        return [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def unknown_features(refs: list[str], views: dict) -> list[str]:
    """The references among `refs` that name no feature of `views`."""
    bad = []
    for ref in refs:
        try:
            resolve(ref, views)
        except LoopstackError:
            bad.append(ref)
    return bad


def columnar(rows: list[dict], names: list[str], stamps: list[dict], found: list[bool]) -> dict:
    """Feast's columnar answer from rows (entity columns first: keys of any row, in order of appearance)."""
    feats = set(names)
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in feats))
    names_out = keys + names
    results = [{"values": [r.get(k) for r in rows],
                "statuses": ["PRESENT" if k in r else "NOT_FOUND" for r in rows],
                "event_timestamps": [None] * len(rows)} for k in keys]
    for n in names:
        vals = [r[n] for r in rows]
        results.append({"values": vals,
                        "statuses": ["NOT_FOUND" if not f else "PRESENT" if v is not None else "NULL_VALUE"
                                     for v, f in zip(vals, found)],
                        "event_timestamps": [us_to_iso(s[n]) for s in stamps]})
    return {"metadata": {"feature_names": names_out}, "results": results, "found": found}


def columns_body(entities: dict[str, list], cols: OnlineColumns) -> dict:
    """`columnar` of a read of columnar entities, built from the columns (no per-row dicts)."""
    n = len(cols.found)
    keys = list(entities) if n else []      # (with no rows there are no entity columns, as in `columnar`)
    present, nulls = ["PRESENT"] * n, [None] * n
    results = [{"values": entities[k], "statuses": present, "event_timestamps": nulls} for k in keys]
    found = cols.found
    all_found = all(found)
    for vals, stamps in zip(cols.values, cols.event_timestamps):
        if all_found:   # the usual case: one test per value
            statuses = ["PRESENT" if v is not None else "NULL_VALUE" for v in vals]
        else:
            statuses = ["NOT_FOUND" if not f else "PRESENT" if v is not None else "NULL_VALUE"
                        for v, f in zip(vals, found)]
        results.append({"values": vals, "statuses": statuses, "event_timestamps": list(map(us_to_iso, stamps))})
    return {"metadata": {"feature_names": keys + cols.features}, "results": results, "found": found}


class FeatureReads:
    """Answers ``POST /get-online-features`` from `online()` (the server's current OnlineFeatures)."""

    def __init__(self, online: Callable[[], "OnlineFeatures"], max_rows: int,
                 count_rows: Callable[[int], None], max_body: int = MAX_BODY_BYTES) -> None:
        self.online, self.max_rows, self.count_rows, self.max_body = online, max_rows, count_rows, max_body

    def too_large(self, st: dict) -> tuple[int, bytes]:
        """The 413 answer to a body over `max_body` bytes (read no further than that)."""
        return error_body(413, "payload_too_large", too_large_detail(self.max_body, "entities"),
                          st.get("request_id"), st)

    def handle(self, raw: bytes, content_type: str | None, st: dict) -> tuple[int, bytes]:
        """Status and JSON body for one request body; `st` is the request state (request id in, notes out)."""
        rid = st.get("request_id")
        body = parse_body(raw, content_type)
        if isinstance(body, str):
            return error_body(400, "invalid_request", body, rid, st)
        if isinstance(body, list):
            return invalid_body(body, content_type, rid, st)
        n = len(next(iter(body.entities.values()))) if body.entities is not None else len(body.entity_rows or ())
        st["rows"], st["features"] = n, len(body.features)
        if n > self.max_rows:
            return error_body(422, "invalid_request", f"{n} entity rows in one request; the limit is "
                              f"{self.max_rows}: split the request", rid, st)
        online = self.online()
        try:
            if body.entities is not None:
                cols = online.get_online_columns(body.features, body.entities, body.as_of_us(),
                                                 body.full_feature_names)
                out = columns_body(body.entities, cols)
            else:
                resp = online.get_online_features(body.features, body.entity_rows or [], body.as_of_us(),
                                                  body.full_feature_names)
                out = columnar(resp.rows, resp.features, resp.event_timestamps, resp.found)
        except FeatureReferenceError as exc:
            bad = unknown_features(list(dict.fromkeys(body.features)), online.views)
            if bad:
                return error_body(404, "unknown_feature", str(exc), rid, st, unknown_features=bad)
            return error_body(422, "invalid_request", str(exc), rid, st)
        except RetrievalError as exc:
            return error_body(422, "invalid_entities", str(exc), rid, st)
        except StateError as exc:
            return error_body(503, "state_mismatch", str(exc), rid, st)
        except online.store.unavailable as exc:
            return store_unavailable(exc, rid, st)
        except Exception as exc:
            log.exception("get-online-features failed (request %s)", rid)
            return error_body(500, "internal", f"{type(exc).__name__}: {exc}", rid, st)
        self.count_rows(n)
        return 200, dumps(out)

    async def asgi(self, scope: dict, receive: Callable, send: Callable) -> None:
        """The route as a bare ASGI app: read the body, `handle` it, send the answer."""
        st = scope.setdefault("state", {})
        try:
            raw = await read_body(receive, self.max_body)
        except BodyTooLarge:
            status, body = self.too_large(st)
        else:
            if raw is None:
                return   # the client left before sending its body: nobody to answer
            ct = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
            status, body = self.handle(raw, ct, st)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"%d" % len(body)), JSON_HEADERS]})
        await send({"type": "http.response.body", "body": body})
