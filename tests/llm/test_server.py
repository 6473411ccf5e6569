"""The OpenAI-compatible HTTP layer over a fake engine (real uvicorn on loopback, official openai client)."""
from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import openai
import pytest

from loopstack.llm.server import create_app
from tests.llm.server_helpers import FakeEngine, run_server

MODEL = "fake-model"


@pytest.fixture
def serve():
    """serve(**fake_engine_kwargs) -> (base_url, engine); servers stop at the end of the test."""
    stack = []

    def start(**kw):
        eng = FakeEngine(**kw)
        cm = run_server(create_app(eng, eng.tokenizer, MODEL, max_context=eng.max_model_len))
        url = cm.__enter__()
        stack.append(cm)
        return url, eng

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def shared():
    """One server over a default fake engine for tests that leave no state behind."""
    eng = FakeEngine()
    with run_server(create_app(eng, eng.tokenizer, MODEL, max_context=eng.max_model_len)) as url:
        yield url, eng


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def sse_events(resp: httpx.Response) -> list[str]:
    """The data payloads of an SSE body, checking every event is exactly `data: ...` followed by a blank line."""
    raw = resp.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: "):] for e in events]


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_completion_text_usage_and_request_id(serve, caplog):
    caplog.set_level(logging.INFO, logger="loopstack.access")
    url, eng = serve()
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 9,
                                                   "temperature": 0, "seed": 7, "top_k": 5, "priority": -1},
                   headers={"x-request-id": "abc-123"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "abc-123"
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == MODEL
    assert body["choices"] == [{"index": 0, "text": FakeEngine.REPLY[:9], "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    (rid, params, priority), = eng.added
    assert rid == body["id"] and priority == -1
    assert (params.max_tokens, params.temperature, params.seed, params.top_k, params.top_p) == (9, 0.0, 7, 5, 1.0)
    assert len(eng.thread_ids) == 1 and threading.get_ident() not in eng.thread_ids   # only the engine thread
    assert wait_for(lambda: any(r.name == "loopstack.access" for r in caplog.records))   # written after the send
    rec = next(json.loads(r.message) for r in caplog.records if r.name == "loopstack.access")
    assert rec["request_id"] == "abc-123" and rec["id"] == body["id"] and rec["status"] == 200
    assert rec["prompt_tokens"] == 5 and rec["path"] == "/v1/completions"
    assert rec["completion_tokens"] == 9 and rec["finish_reason"] == "length" and rec["ttft_ms"] > 0


def test_openai_client_completion_chat_and_models(shared):
    url, _ = shared
    c = client(url)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).owned_by == "loopstack"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("other")
    comp = c.completions.create(model=MODEL, prompt=[72, 105], max_tokens=4, stop=["k"])
    assert comp.choices[0].text == "the " and comp.usage.prompt_tokens == 2
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                             {"role": "user", "content": "Hi"}], max_tokens=20,
                                     stop="brown")
    msg = chat.choices[0]
    assert msg.message.role == "assistant" and msg.message.content == "the quick "
    assert msg.finish_reason == "stop" and chat.object == "chat.completion"
    # the prompt is the chat template rendered by the tokenizer, then tokenized
    assert chat.usage.prompt_tokens == len("[system]Be brief.\n[user]Hi\n[assistant]")


def test_chat_without_max_tokens_uses_what_fits_in_the_kv_cache(serve):
    url, eng = serve(num_blocks=20, block_size=4, max_model_len=256)   # 80 tokens of KV cache, context 256
    msgs = [{"role": "user", "content": "Hi"}]
    n_prompt = len(eng.tokenizer.apply_chat_template(msgs))
    r = client(url).chat.completions.create(model=MODEL, messages=msgs)
    assert r.usage.completion_tokens == 80 - n_prompt and r.choices[0].finish_reason == "length"
    assert eng.added[0][1].max_tokens == 80 - n_prompt


def test_streaming_chat_with_openai_client(shared):
    url, _ = shared
    stream = client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == FakeEngine.REPLY[:20]
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 10   # really incremental
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)


def test_streaming_completion_wire_format_and_stop(shared):
    url, _ = shared
    with httpx.stream("POST", f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 30,
                                                             "stream": True, "stop": ["fox"]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "the quick brown "   # nothing past the stop
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_concurrent_streams_get_their_own_outputs(serve):
    url, eng = serve(max_running=3)
    results: dict[int, str] = {}

    def one(n: int) -> None:
        s = client(url).completions.create(model=MODEL, prompt="p" * (n + 1), max_tokens=5 + n, stream=True)
        results[n] = "".join(ch.choices[0].text for ch in s)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {n: FakeEngine.REPLY[:5 + n] for n in range(6)}
    assert len(eng.thread_ids) == 1


def test_logprobs_completion_and_chat(shared):
    url, _ = shared
    c = client(url)
    comp = c.completions.create(model=MODEL, prompt="a", max_tokens=3, logprobs=1)
    lp = comp.choices[0].logprobs
    assert lp.tokens == ["t", "h", "e"] and lp.token_logprobs == [-0.5, -0.5, -0.5]
    assert lp.text_offset == [0, 1, 2] and lp.top_logprobs[0] == {"t": -0.5}
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], max_tokens=2,
                                     logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert [x.token for x in content] == ["t", "h"] and content[0].logprob == -0.5
    assert [t.token for t in content[0].top_logprobs] == ["t", "A"]
    assert content[1].top_logprobs[1].logprob == -2.0 and content[0].bytes == [ord("t")]


@pytest.mark.parametrize("body,param,code", [
    ({"model": "gpt-4", "prompt": "hi"}, "model", "model_not_found"),
    ({"model": MODEL, "prompt": "hi", "temperature": -0.1}, "temperature", None),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, "top_p", None),
    ({"model": MODEL, "prompt": "hi", "top_p": 1.5}, "top_p", None),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens", None),
    ({"model": MODEL, "prompt": "hi", "top_k": -3}, "top_k", None),
    ({"model": MODEL, "prompt": "hi", "n": 2}, "n", None),
    ({"model": MODEL, "prompt": "hi" * 100, "max_tokens": 100}, "prompt", "context_length_exceeded"),
    ({"model": MODEL, "prompt": [5, 500]}, "prompt", None),
    ({"model": MODEL, "prompt": "hi", "seed": 2 ** 64}, "seed", "invalid_type"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 21}, "logprobs", None),
    ({"model": MODEL, "prompt": "hi", "stop": ["ok", ""]}, "stop", None),
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt", None),
    ({"model": MODEL, "prompt": "hi", "echo": True}, "echo", None),
    ({"model": MODEL, "prompt": "hi", "presence_penalty": 0.5}, "presence_penalty", None),
    ({"model": MODEL, "prompt": ""}, "prompt", None),
    ({"model": MODEL}, "prompt", "missing_required_parameter"),
    ({"model": MODEL, "prompt": "hi", "temperature": "hot"}, "temperature", "invalid_type"),
    ({"model": MODEL, "prompt": {"text": "hi"}}, "prompt", "invalid_type"),
    ({"model": MODEL, "prompt": "hi", "stop": [1, 2]}, "stop", "invalid_type"),
    ({"model": MODEL, "prompt": "hi", "seed": "x", "stream": "maybe"}, "seed", "invalid_type"),
    # lax parsing read these as numbers: true -> 1 token, "100" -> 100, 1.5 -> seed 1
    ({"model": MODEL, "prompt": "hi", "max_tokens": True}, "max_tokens", "invalid_type"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": "100"}, "max_tokens", "invalid_type"),
    ({"model": MODEL, "prompt": "hi", "seed": 1.5}, "seed", "invalid_type"),
])
def test_bad_completion_requests_are_400_in_openai_format(shared, body, param, code):
    url, eng = shared
    for stream in (False, True):
        r = httpx.post(f"{url}/v1/completions", json={**body, "stream": stream})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
        assert len(err["message"]) > 15
    assert not eng.reqs   # nothing reached the engine


def test_bad_chat_requests_and_openai_client_errors(shared):
    url, _ = shared
    c = client(url)
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "model_not_found" and "nope" in exc.value.message
    with pytest.raises(openai.BadRequestError, match="context length"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 300}])
    for bad in ({"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
                {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
                {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}):
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, **bad})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (bad, r.text)
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_a_text_too_long_for_the_context_is_refused_before_tokenizing():
    eng = FakeEngine()
    encoded: list[int] = []

    class Tok(type(eng.tokenizer)):
        max_token_bytes = 4

        def encode(self, text: str, add_bos: bool = False) -> list[int]:
            encoded.append(len(text))
            return super().encode(text, add_bos)

    with run_server(create_app(eng, Tok(), MODEL, max_context=eng.max_model_len)) as url:
        huge = "x" * (4 * eng.max_model_len)
        for path, body in (("/v1/completions", {"prompt": huge}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": huge}]})):
            r = httpx.post(f"{url}{path}", json={"model": MODEL, "max_tokens": 1, **body})
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert encoded == []   # megabytes of text would block the event loop while they are tokenized
        r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and encoded == [2]


def test_full_queue_is_429_and_waiting_requests_still_finish(serve):
    url, eng = serve(max_waiting=2)
    eng.paused = True
    results: list[int] = []

    def waiting() -> None:
        r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 3}, timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=waiting) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(eng.waiting) == 2)
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user",
                                                                                     "content": "x"}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "queue_full" and err["type"] == "rate_limit_error" and "capacity" in err["message"]
    with pytest.raises(openai.RateLimitError):
        client(url).completions.create(model=MODEL, prompt="y", stream=True)
    eng.paused = False
    for t in threads:
        t.join(30)
    assert results == [200, 200]
    text = httpx.get(f"{url}/metrics").text
    assert 'loopstack_llm_requests_rejected_total{endpoint="chat",status="429"} 1.0' in text


def test_disconnect_mid_stream_aborts_and_frees_blocks(serve):
    url, eng = serve(step_s=0.01)
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", f"{url}/v1/chat/completions",
                      json={"model": MODEL, "messages": [{"role": "user", "content": "long prompt " * 5}],
                            "max_tokens": 150, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(8)]
            assert any('"content":"t"' in x for x in got)
            assert eng.used_blocks() > 0
    assert wait_for(lambda: len(eng.aborted) == 1 and eng.used_blocks() == 0, timeout=2.0)
    assert not eng.running and not eng.waiting
    text = httpx.get(f"{url}/metrics").text
    assert "loopstack_llm_engine_kv_blocks_used 0.0" in text
    assert "loopstack_llm_requests_aborted_total 1.0" in text


def test_disconnect_while_waiting_for_non_streaming_answer_aborts(serve):
    url, eng = serve(step_s=0.01)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 200},
                   timeout=0.3)
    assert wait_for(lambda: len(eng.aborted) == 1 and eng.used_blocks() == 0, timeout=2.0)


def test_metrics_healthz_and_engine_failure(serve):
    url, eng = serve()
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    client(url).completions.create(model=MODEL, prompt="abc", max_tokens=5)
    text = httpx.get(f"{url}/metrics").text
    assert "loopstack_llm_time_to_first_token_seconds_count 1.0" in text
    assert "loopstack_llm_time_per_output_token_seconds_count 1.0" in text
    assert "loopstack_llm_generation_tokens_total 5.0" in text
    assert "loopstack_llm_prompt_tokens_total 3.0" in text
    assert "loopstack_llm_engine_prefix_cache_hit_rate 0.25" in text
    assert "loopstack_llm_engine_kv_blocks_free 64.0" in text
    assert "ttft_history" not in text   # lists are not gauges
    assert 'loopstack_llm_requests_finished_total{reason="length"} 1.0' in text
    assert 'loopstack_llm_http_requests_total{path="/v1/completions",status="200"} 1.0' in text
    eng.fail_next = True
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "abc"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "simulated step failure" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "abc"}).status_code == 200
    assert "loopstack_llm_worker_failures_total 1.0" in httpx.get(f"{url}/metrics").text


def test_engine_failure_mid_stream_is_reported_in_band(serve):
    url, eng = serve(step_s=0.01)
    with httpx.stream("POST", f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 100,
                                                             "stream": True}) as r:
        lines = r.iter_lines()
        first = next(lines)
        assert first.startswith("data: {") and '"text"' in first
        eng.fail_next = True
        rest = [x for x in lines if x]
    err = json.loads(rest[-2][len("data: "):])["error"]
    assert rest[-1] == "data: [DONE]" and err["type"] == "server_error" and "simulated" in err["message"]
    assert eng.used_blocks() == 0


def test_engine_worker_steps_in_one_thread_and_answers_everyone_at_stop():
    from loopstack.llm.engine.params import SamplingParams
    from loopstack.llm.streaming import ACCEPTED, EngineFailed, EngineWorker
    eng = FakeEngine(step_s=0.005)
    w = EngineWorker(eng, idle_poll_s=0.05)
    got: list = []
    w.start()
    w.submit("a", [5, 6], SamplingParams(max_tokens=3), got.append)
    assert wait_for(lambda: got and got[-1] is not ACCEPTED and got[-1].finished)
    assert got[0] is ACCEPTED and [o.outputs[0].text for o in got[1:]] == ["t", "th", "the"]
    assert w.call(eng.metrics).result(5)["kv_blocks_used"] == 0
    w.submit("b", [5], SamplingParams(max_tokens=200), got.append)
    assert wait_for(lambda: eng.used_blocks() > 0)
    w.stop()
    assert not w.alive and isinstance(got[-1], EngineFailed) and eng.aborted == ["b"]
    with pytest.raises(EngineFailed):
        w.call(eng.metrics).result(1)
    assert eng.thread_ids == {w._thread.ident}
