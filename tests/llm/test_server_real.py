"""The server over the real LLMEngine: a tiny random model (char tokenizer) and SmolLM2-135M with the openai client."""
from __future__ import annotations

import dataclasses
import re
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loopstack.llm.config import EngineConfig
from loopstack.llm.engine.llm_engine import LLMEngine
from loopstack.llm.engine.params import SamplingParams
from loopstack.llm.server import create_app
from tests.llm.conftest import build_tiny_model
from tests.llm.server_helpers import CharTokenizer, run_server


def offline(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> tuple[str, list[int]]:
    """Greedy reference: the same engine API driven directly, no server."""
    engine.add_request("ref", prompt, params)
    out = None
    while engine.has_unfinished():
        for o in engine.step():
            out = o
    return out.outputs[0].text, out.outputs[0].token_ids


def gauge(url: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(scope="module")
def tiny_server():
    """A tiny random Llama (context 4096, so streams can run long) behind the server; one waiting slot."""
    model = build_tiny_model(max_position=4096)
    cfg = EngineConfig(block_size=4, num_kv_blocks=2048, max_num_seqs=1, max_waiting=1)
    engine = LLMEngine(model, CharTokenizer(), cfg)
    ref = LLMEngine(model, CharTokenizer(), cfg)
    with run_server(create_app(engine, engine.tokenizer, "tiny")) as url:
        yield url, engine, ref


def test_tiny_greedy_http_equals_offline_engine_and_stream(tiny_server):
    url, _, ref = tiny_server
    prompt = "hello paged world"
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    text, ids = offline(ref, CharTokenizer().encode(prompt), params)
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["choices"][0]["text"] == text and got["choices"][0]["finish_reason"] == "length"
    assert got["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 24, "total_tokens": len(prompt) + 24}
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    std = {k: v for k, v in body.items() if k != "ignore_eos"}
    chunks = list(c.completions.create(stream=True, extra_body={"ignore_eos": True}, **std))
    assert "".join(ch.choices[0].text for ch in chunks) == text
    lp = c.completions.create(logprobs=2, extra_body={"ignore_eos": True}, **std).choices[0].logprobs
    assert len(lp.token_logprobs) == 24 and all(v <= 0 for v in lp.token_logprobs)
    assert "".join(lp.tokens) == CharTokenizer().decode(ids, skip_special=False)
    assert gauge(url, "loopstack_llm_engine_kv_blocks_used") == 0
    families = list(text_string_to_metric_families(httpx.get(f"{url}/metrics").text))
    names = [f.name for f in families]
    assert len(names) == len(set(names))   # engine keys and server series never collide
    for key in ("num_waiting", "num_running", "kv_blocks_used", "kv_blocks_free", "prefix_cache_hit_rate",
                "preemptions", "spec_acceptance_rate"):
        assert f"loopstack_llm_engine_{key}" in names


def test_tiny_disconnect_mid_stream_frees_blocks_and_429_when_queue_full(tiny_server):
    url, engine, _ = tiny_server
    long = {"model": "tiny", "prompt": "a long running request", "max_tokens": 3000, "ignore_eos": True,
            "stream": True}
    finished_before = gauge(url, "loopstack_llm_engine_finished_requests_total")
    with httpx.Client(timeout=60) as h, h.stream("POST", f"{url}/v1/completions", json=long) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert [next(lines) for _ in range(6)]   # a few chunks arrived: the request is running
        assert gauge(url, "loopstack_llm_engine_kv_blocks_used") > 0
        assert gauge(url, "loopstack_llm_engine_num_running") == 1
        # the batch holds one sequence and the queue one request: the next one after that gets 429
        status: list[int] = []
        waiter = threading.Thread(target=lambda: status.append(httpx.post(
            f"{url}/v1/completions", json={"model": "tiny", "prompt": "queued", "max_tokens": 4},
            timeout=60).status_code))
        waiter.start()
        assert wait_for(lambda: gauge(url, "loopstack_llm_engine_num_waiting") == 1)
        full = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "one too many"})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert "waiting queue is full" in full.json()["error"]["message"]
    # the client left: the long request is aborted, its blocks freed, and the queued request runs
    waiter.join(30)
    assert status == [200]
    assert wait_for(lambda: gauge(url, "loopstack_llm_engine_kv_blocks_used") == 0)
    assert gauge(url, "loopstack_llm_requests_aborted_total") == 1
    assert gauge(url, "loopstack_llm_engine_finished_requests_total") == finished_before + 1   # only the queued one
    assert not engine.has_unfinished()


@pytest.mark.parametrize("spec", [None, "ngram"])
def test_tiny_concurrent_streams_match_one_at_a_time(spec):
    """Batched streams through the server (with speculative decoding too) equal greedy runs one at a time."""
    model = build_tiny_model()
    cfg = EngineConfig(block_size=4, num_kv_blocks=256, max_num_seqs=4, max_num_batched_tokens=32)
    prompts = ["first prompt", "a second, longer prompt for chunked prefill", "3", "fourth one here"]
    ref = LLMEngine(model, CharTokenizer(), cfg)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    expected = [offline(ref, CharTokenizer().encode(p), params)[0] for p in prompts]
    engine = LLMEngine(model, CharTokenizer(), dataclasses.replace(cfg, speculative_method=spec))
    got: dict[int, str] = {}
    with run_server(create_app(engine, engine.tokenizer, "tiny")) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)

        def one(i: int) -> None:
            s = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=16, temperature=0, stream=True,
                                     extra_body={"ignore_eos": True})
            got[i] = "".join(ch.choices[0].text for ch in s)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == dict(enumerate(expected))
        assert gauge(url, "loopstack_llm_engine_steps_total") < 4 * 16   # they were batched, not run one by one
        if spec:   # several tokens per step reached the streams as one delta
            assert gauge(url, "loopstack_llm_engine_spec_accepted_tokens_total") > 0


def test_tiny_context_limit_is_400(tiny_server):
    url, _, _ = tiny_server
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x" * 4000, "max_tokens": 100})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "4096" in r.json()["error"]["message"]


@pytest.mark.llm_real
def test_smollm2_with_openai_client(real_model):
    model, tok = real_model
    engine = LLMEngine(model, tok, EngineConfig(kv_cache_mb=64, max_num_seqs=8))
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ref_text, _ = offline(LLMEngine(model, tok, EngineConfig(kv_cache_mb=16)),
                          tok.encode(tok.apply_chat_template(messages)), SamplingParams(max_tokens=12, temperature=0))
    with run_server(create_app(engine, tok, "smollm2-135m")) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in c.models.list()] == ["smollm2-135m"]
        comp = c.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=6,
                                    temperature=0)
        assert "Paris" in comp.choices[0].text and comp.usage.completion_tokens <= 6
        assert comp.usage.prompt_tokens == len(tok.encode("The capital of France is"))
        chat = c.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12, temperature=0)
        answer = chat.choices[0].message.content
        assert answer == ref_text and "Paris" in answer
        assert chat.usage.prompt_tokens == len(tok.encode(tok.apply_chat_template(messages)))
        stream = c.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=12, temperature=0,
                                           stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == answer
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            c.completions.create(model="smollm2-135m", prompt="hi " * 9000, max_tokens=1)
        text = httpx.get(f"{url}/metrics").text
        assert "loopstack_llm_time_to_first_token_seconds_count 3.0" in text
        assert gauge(url, "loopstack_llm_engine_kv_blocks_used") == 0
        # a client that leaves mid-stream frees its blocks at once
        long = c.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Count to 500."}],
                                         max_tokens=400, stream=True, extra_body={"ignore_eos": True})
        for n, _chunk in enumerate(long):
            if n == 3:
                assert gauge(url, "loopstack_llm_engine_kv_blocks_used") > 0
                break
        long.close()
        assert wait_for(lambda: gauge(url, "loopstack_llm_engine_kv_blocks_used") == 0, timeout=10)
        assert gauge(url, "loopstack_llm_requests_aborted_total") == 1
        assert gauge(url, "loopstack_llm_engine_generated_tokens_total") < 30 + 100   # 30 before; far from 400
