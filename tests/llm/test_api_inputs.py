"""Offline API edge cases: interleaved streams, bad prompt and parameter shapes, chat argument shapes."""

from __future__ import annotations

import pytest

from loopstack.llm.engine.params import SamplingParams
from tests.llm.test_api import make_llm

G5 = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
G10 = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


@pytest.mark.timeout(30)  # before the fix, resuming the paused stream looped forever
def test_a_paused_stream_finished_by_another_stream_ends_instead_of_hanging():
    llm = make_llm()
    alone = llm.generate("hello", G5, use_tqdm=False)[0].outputs[0].token_ids
    a, b = llm.stream("hello", G5), llm.stream("world", G10)
    next(a)
    list(b)  # b's steps also run a to its end, while a is paused
    rest = list(a)
    assert rest and rest[-1].finished and rest[-1].outputs[0].finish_reason == "length"
    assert rest[-1].outputs[0].token_ids == alone
    assert not llm.engine.has_unfinished()


@pytest.mark.timeout(30)
def test_a_paused_stream_finished_by_generate_ends_instead_of_hanging():
    llm = make_llm()
    a = llm.stream("hello", G5)
    next(a)
    llm.generate(["x"], G10, use_tqdm=False)
    rest = list(a)
    assert rest[-1].finished and len(rest[-1].outputs[0].token_ids) == 5


def test_stream_checks_its_prompt_like_generate():
    llm = make_llm()
    with pytest.raises(ValueError, match="stream\\(\\) takes one prompt, got 2"):
        next(llm.stream(["hello", "world"], G5))
    with pytest.raises(ValueError, match="list of token ids, got int"):
        next(llm.stream(5, G5))
    with pytest.raises(ValueError, match="list of token ids"):
        next(llm.stream([104.7, 105.2], G5))  # not silently truncated to [104, 105]
    with pytest.raises(ValueError, match="the prompt is empty"):
        next(llm.stream([], G5))
    assert [len(o.outputs[0].token_ids) for o in llm.stream([104, 105], G5)][-1] == 5


def test_engine_options_the_model_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="max_model_len=100000 is longer than the model's context \\(512"):
        make_llm(max_model_len=100000)   # was silently cut to 512
    assert make_llm(max_model_len=300).engine.max_model_len == 300
    with pytest.raises(ValueError, match="must name some"):
        make_llm(speculative_method="self", spec_skip_layers=())   # a draft that skips nothing is the model itself
    with pytest.raises(ValueError, match="cannot allocate a KV cache .* lower kv_cache_mb"):
        make_llm(num_kv_blocks=None, kv_cache_mb=1e12)   # was a bare MemoryError


def test_engine_refuses_token_ids_that_are_not_integers():
    eng = make_llm().engine
    for bad in ([104.7, 105.2], ["h", "i"], [True, 5]):
        with pytest.raises(ValueError, match="integer token ids"):
            eng.add_request(f"r{bad}", bad, G5)
    assert not eng.has_unfinished()


def test_generate_and_chat_name_arguments_of_the_wrong_shape():
    llm = make_llm()
    for params in ([{"max_tokens": 2}], {"max_tokens": 2}):
        with pytest.raises(ValueError, match="params must be a SamplingParams or a list of them, got dict"):
            llm.generate(["a"], params, use_tqdm=False)
    for messages in ({"role": "user", "content": "hi"}, ["hello"], "hello", [[]]):
        with pytest.raises(ValueError, match="chat\\(\\) takes a conversation"):
            llm.chat(messages, G5, use_tqdm=False)
    two = llm.chat([[{"role": "user", "content": "a"}], ({"role": "user", "content": "b"},)], G5, use_tqdm=False)
    assert [o.prompt for o in two] == ["<user>a<assistant>", "<user>b<assistant>"]
    assert llm.chat([], G5, use_tqdm=False) == []
