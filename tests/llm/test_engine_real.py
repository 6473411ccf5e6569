"""The engine on the real SmolLM2-135M: batched, prefix-cached and speculative greedy runs are token-identical
to running each prompt alone."""

from __future__ import annotations

import pytest

from loopstack.llm.config import EngineConfig
from loopstack.llm.engine.llm_engine import LLMEngine
from loopstack.llm.engine.params import SamplingParams

pytestmark = pytest.mark.llm_real

SYSTEM = "You are a concise assistant. Answer in one sentence and quote the question's words when you can."
QUESTIONS = ["What is the capital of France?", "Name a prime number larger than ten.",
             "Repeat after me: the quick brown fox jumps over the lazy dog.", "What colour is the sky?"]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                             {"role": "user", "content": q}])) for q in QUESTIONS]


def run(engine: LLMEngine, prompt_ids: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    for i, p in enumerate(prompt_ids):
        engine.add_request(str(i), p, params)
    out: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                out[o.request_id] = o.outputs[0].token_ids
    assert engine.block_manager.num_used_blocks == 0
    return [out[str(i)] for i in range(len(prompt_ids))]


@pytest.fixture(scope="module")
def single_runs(real_model):
    model, tok = real_model
    ids = prompts(tok)
    alone = []
    for p in ids:
        eng = LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, max_num_seqs=1, enable_prefix_caching=False))
        alone.append(run(eng, [p])[0])
    return ids, alone


def test_batched_and_prefix_cached_runs_match_single_sequence_runs(real_model, single_runs):
    model, tok = real_model
    ids, alone = single_runs
    eng = LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, max_num_seqs=8, max_num_batched_tokens=512))
    assert run(eng, ids) == alone  # batched together, different lengths, shared system-prompt blocks
    assert run(eng, ids[::-1]) == alone[::-1]  # again, now served from the prefix cache
    assert eng.metrics()["prefix_cache_hits"] > 0
    assert len(set(map(tuple, alone))) == len(alone)  # distinct answers: the comparison is not trivial


@pytest.mark.parametrize("method", ["ngram", "self"])
def test_speculative_runs_match_single_sequence_runs(real_model, single_runs, method):
    model, tok = real_model
    ids, alone = single_runs
    eng = LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, max_num_seqs=8, speculative_method=method,
                                             num_speculative_tokens=3))
    n = 2 if method == "self" else len(ids)  # the layer-skipping drafter is slow on CPU: two prompts suffice
    assert run(eng, ids[:n]) == alone[:n]
    assert eng.metrics()["spec_proposed_tokens"] > 0


def test_runs_that_preempt_match_single_sequence_runs(real_model, single_runs):
    """A KV budget too small for all four at once: sequences are preempted, recomputed, and still give
    exactly the tokens they give alone."""
    model, tok = real_model
    ids, alone = single_runs
    need = max(-(-(len(p) + GREEDY.max_tokens) // 16) for p in ids)
    eng = LLMEngine(model, tok, EngineConfig(num_kv_blocks=need * 2 + 1, max_num_seqs=4, max_num_batched_tokens=512,
                                             enable_prefix_caching=False))
    assert run(eng, ids) == alone
    assert eng.metrics()["preemptions"] > 0


def test_float16_kv_cache_batched_run_on_the_real_model(real_model, single_runs):
    """The float16 KV cache serves the real model batched: it answers the questions like the float32 cache
    (the capital question names Paris) and most outputs are token-identical to the float32 ones."""
    model, tok = real_model
    ids, alone = single_runs
    eng = LLMEngine(model, tok, EngineConfig(num_kv_blocks=64, max_num_seqs=8, kv_cache_dtype="float16"))
    assert eng.kv.k.dtype.itemsize == 2
    got = run(eng, ids)
    assert "Paris" in tok.decode(got[0])
    assert sum(g == a for g, a in zip(got, alone)) >= len(ids) - 1
