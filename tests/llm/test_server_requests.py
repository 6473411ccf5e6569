"""Requests at the edges of the OpenAI API: each answered with a clear status in the OpenAI error shape."""
from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from loopstack.llm.server import create_app
from tests.llm.server_helpers import CharTokenizer, FakeEngine

MODEL = "fake-model"


def app_client(tokenizer: object = None, **kw: object) -> tuple[TestClient, FakeEngine]:
    """A TestClient over a fake engine (enter it with `with` to start the engine thread)."""
    eng = FakeEngine()
    app = create_app(eng, tokenizer or eng.tokenizer, MODEL, max_context=eng.max_model_len, **kw)
    return TestClient(app, raise_server_exceptions=False), eng


def assert_openai_error(r: object, status: int, param: str | None = None) -> dict:
    """The response is `status` with the OpenAI error body; returns the error object."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


class StrictTemplate(CharTokenizer):
    """A chat template that refuses conversations whose roles do not alternate (as Llama 2 / Mistral ones do)."""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        roles = [m["role"] for m in messages if m["role"] != "system"]
        if any(a == b for a, b in zip(roles, roles[1:])):
            raise ValueError("chat template rejected the messages: Conversation roles must alternate "
                             "user/assistant/user/assistant/...")
        return super().apply_chat_template(messages, add_generation_prompt)


def test_messages_the_chat_template_refuses_are_400_not_500():
    c, eng = app_client(StrictTemplate())
    with c:
        msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs, "stream": stream})
            err = assert_openai_error(r, 400, "messages")
            assert "alternate" in err["message"] and err["type"] == "invalid_request_error"
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs[:1], "max_tokens": 2})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "th"
    assert len(eng.added) == 1


def test_unknown_routes_wrong_methods_and_unexpected_failures_answer_in_the_openai_shape():
    class Broken(CharTokenizer):
        def encode(self, text: str, add_bos: bool = False) -> list[int]:
            raise RuntimeError("tokenizer exploded")

    c, _ = app_client(Broken())
    with c:
        err = assert_openai_error(c.get("/v1/completions"), 405)
        assert err["code"] == "method_not_allowed"
        assert c.get("/v1/completions").headers["allow"] == "POST"
        assert assert_openai_error(c.post("/v1/embeddings", json={}), 404)["code"] == "not_found"
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi"}, headers={"x-request-id": "r-1"})
        err = assert_openai_error(r, 500)
        assert err["type"] == "server_error" and "tokenizer exploded" in err["message"]
        assert r.headers["x-request-id"] == "r-1"
        assert c.get("/healthz").status_code == 200


class BosTokenizer(CharTokenizer):
    """A tokenizer whose model wants BOS before a raw text (GGUF tokenizer.ggml.add_bos_token, as Llama's)."""

    add_bos_token = True


def test_a_text_prompt_gets_bos_as_the_engine_gives_it_and_chat_text_does_not():
    tok = BosTokenizer()
    c, eng = app_client(tok)
    with c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 3
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": [104, 105], "max_tokens": 1})
        assert r.json()["usage"]["prompt_tokens"] == 2   # token ids are sent as given
        r = c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 1,
                                                  "messages": [{"role": "user", "content": "hi"}]})
        chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
        assert r.json()["usage"]["prompt_tokens"] == len(tok.encode(chat))   # the template places any BOS
    assert tok.encode("hi", add_bos=True) == [1, 104, 105]


def test_a_body_over_the_limit_is_413_without_reaching_the_engine():
    c, eng = app_client(max_body_bytes=1000)
    with c:
        for path in ("/v1/completions", "/v1/chat/completions"):
            r = c.post(path, json={"model": MODEL, "prompt": list(range(3, 100)) * 10, "max_tokens": 1})
            err = assert_openai_error(r, 413)
            assert err["code"] == "payload_too_large" and "1000 bytes" in err["message"]
            assert r.headers["connection"] == "close"
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 900, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"   # read: under
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
        assert r.status_code == 200
    assert len(eng.added) == 1


def test_options_the_engine_would_ignore_are_400_not_silently_dropped():
    c, eng = app_client()
    msgs = [{"role": "user", "content": "hi"}]
    with c:
        for path, body, param in (
                ("/v1/completions", {"prompt": "hi", "logit_bias": {"50256": -100}}, "logit_bias"),
                ("/v1/chat/completions", {"messages": msgs, "logit_bias": {"104": 100}}, "logit_bias"),
                ("/v1/chat/completions", {"messages": msgs, "tool_choice": "required"}, "tool_choice"),
                ("/v1/chat/completions", {"messages": msgs, "tool_choice": {"type": "function",
                                                                            "function": {"name": "f"}}},
                 "tool_choice"),
                ("/v1/chat/completions", {"messages": msgs, "functions": [{"name": "f"}]}, "functions"),
                ("/v1/chat/completions", {"messages": msgs, "function_call": {"name": "f"}}, "function_call")):
            assert_openai_error(c.post(path, json={"model": MODEL, **body}), 400, param)
        for ok in ({"logit_bias": {}}, {"tool_choice": "none"}, {"tool_choice": "auto", "tools": []},
                   {"function_call": "none"}):
            r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 1, **ok})
            assert r.status_code == 200, (ok, r.text)
    assert len(eng.added) == 4


def test_a_stream_that_is_not_read_holds_only_the_newest_output():
    """Outputs are cumulative: a stalled reader must not queue one copy of the whole text per engine step."""
    from loopstack.llm.engine.params import CompletionOutput, RequestOutput
    from loopstack.llm.openai_schema import Prepared
    from loopstack.llm.server import _Stream
    from loopstack.llm.server_metrics import LLMServerMetrics
    from loopstack.llm.streaming import ACCEPTED

    class Worker:
        def submit(self, rid, ids, params, deliver, priority):
            self.deliver = deliver
            deliver(ACCEPTED)

        def abort(self, rid):
            raise AssertionError("nothing to abort: the request finished")

    def out(n: int, done: bool = False) -> RequestOutput:
        return RequestOutput("r", [5], [CompletionOutput("x" * n, [120] * n, "length" if done else None)], done)

    async def run() -> list[RequestOutput]:
        w = Worker()
        s = _Stream(w, LLMServerMetrics(), "completions", "r", 0.0)
        await s.start(Prepared([5], {"max_tokens": 500}, True, False, None), None)
        for n in range(1, 500):   # the engine runs on while the client reads nothing
            w.deliver(out(n))
        await asyncio.sleep(0)
        assert s.q.qsize() == 1
        w.deliver(out(500, True))
        return [o async for o in s.outputs()]

    got = asyncio.run(run())
    assert [(len(o.outputs[0].text), o.finished) for o in got] == [(499, False), (500, True)]


def test_too_many_or_too_long_stop_strings_are_400_before_the_engine_checks_them_every_step():
    c, eng = app_client()
    with c:
        for stop in (["s%d" % i for i in range(17)], ["x" * 257], "y" * 1000):
            for path, body in (("/v1/completions", {"prompt": "hi"}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
                err = assert_openai_error(c.post(path, json={"model": MODEL, "stop": stop, **body}), 400, "stop")
                assert "at most 16 strings of at most 256 characters" in err["message"]
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 20,
                                            "stop": ["s%d" % i for i in range(15)] + ["brown"]})
        assert r.status_code == 200 and r.json()["choices"][0] == {
            "index": 0, "text": "the quick ", "logprobs": None, "finish_reason": "stop"}
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "stop": "z" * 256})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert len(eng.added) == 2
