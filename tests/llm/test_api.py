"""Offline API (LLM.generate / LLM.stream / chat) and the engine's request handling on a tiny model with a
character tokenizer: stop strings and tokens, max_tokens, EOS, logprobs, seeds, streaming, errors, backpressure."""

from __future__ import annotations

import pytest
import torch

from loopstack.llm.api import LLM
from loopstack.llm.engine.params import QueueFullError, SamplingParams
from tests.llm.conftest import build_tiny_model


class CharTok:
    """One token per ASCII character (3..127); 1 BOS, 2 EOS (unless overridden)."""

    bos_token_id = 1
    vocab_size = 128

    def __init__(self, eos: int = 2) -> None:
        self.eos_token_id = eos

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return [ord(c) if 3 <= ord(c) < 128 else ord("?") for c in text]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return "".join(chr(i) for i in ids if i >= 3)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def make_llm(tok: CharTok | None = None, **kw) -> LLM:
    m = build_tiny_model(tie_embeddings=False)
    with torch.no_grad():
        m.embed_tokens.weight.mul_(0.1)
        m.lm_head.weight.mul_(10.0)
    base = dict(block_size=4, num_kv_blocks=256, max_num_seqs=8)
    base.update(kw)
    return LLM(model=m, tokenizer=tok or CharTok(), **base)


G = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
PROMPTS = ["hello world", "the quick brown fox", "a", "abcabcabc: "]


def test_generate_keeps_prompt_order_and_decodes_text():
    llm = make_llm()
    outs = llm.generate(PROMPTS, G, use_tqdm=False)
    assert [o.prompt for o in outs] == PROMPTS
    for o in outs:
        c = o.outputs[0]
        assert o.finished and c.finish_reason == "length" and len(c.token_ids) == 20
        assert c.text == CharTok().decode(c.token_ids)
    single = llm.generate(PROMPTS[1], G, use_tqdm=False)
    assert single[0].outputs[0].token_ids == outs[1].outputs[0].token_ids


def test_stop_string_truncates_and_streaming_text_never_shrinks():
    llm = make_llm()
    full = llm.generate("hello world", G, use_tqdm=False)[0].outputs[0].text
    stop = full[6:9]
    assert stop and full.find(stop) >= 1
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, stop=[stop, "\x7f\x7f\x7f"])
    out = llm.generate("hello world", params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.text == full[:full.find(stop)]
    texts = [o.outputs[0].text for o in llm.stream("hello world", params)]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # deltas only ever append
    assert texts[-1] == out.text
    assert llm.engine.block_manager.num_used_blocks == 0


def test_stop_token_ids_and_eos():
    llm = make_llm()
    toks = llm.generate("hello world", G, use_tqdm=False)[0].outputs[0].token_ids
    target = toks[5]
    first = toks.index(target)
    out = llm.generate("hello world", SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[target]),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == toks[:first + 1]
    eos_llm = make_llm(CharTok(eos=target))
    out = eos_llm.generate("hello world", SamplingParams(max_tokens=20, temperature=0), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == toks[:first + 1]
    ignored = eos_llm.generate("hello world", G, use_tqdm=False)[0].outputs[0]
    assert ignored.token_ids == toks


@pytest.mark.parametrize("spec", [None, "ngram"])
def test_logprobs_of_chosen_tokens_match_the_model(spec):
    llm = make_llm(speculative_method=spec, num_speculative_tokens=3)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=3)
    out = llm.generate("hello hello hello", params, use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 12
    if spec:
        assert llm.engine.metrics()["spec_accepted_tokens"] > 0  # several tokens per step: rows must line up
    ids = CharTok().encode("hello hello hello") + out.token_ids
    ref = llm.model.forward_dense(torch.tensor([ids]))[0].log_softmax(-1)
    for j, (tok, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        row = ref[len(ids) - len(out.token_ids) - 1 + j]
        assert lp[tok] == pytest.approx(row[tok].item(), abs=1e-4)
        assert set(row.topk(3).indices.tolist()) <= set(lp)


def test_seeded_sampling_is_reproducible_whatever_runs_alongside():
    llm = make_llm()
    p = SamplingParams(max_tokens=15, temperature=1.0, top_p=0.9, seed=42, ignore_eos=True)
    alone = llm.generate("the quick", p, use_tqdm=False)[0].outputs[0].token_ids
    others = SamplingParams(max_tokens=9, temperature=1.0, ignore_eos=True)
    mixed = llm.generate(["zzz", "the quick", "hello there"], [others, p, others], use_tqdm=False)
    assert mixed[1].outputs[0].token_ids == alone
    other_seed = SamplingParams(max_tokens=15, temperature=1.0, top_p=0.9, seed=43, ignore_eos=True)
    assert llm.generate("the quick", other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_stream_yields_every_step_and_abort_on_close():
    llm = make_llm()
    outs = list(llm.stream("abc", G))
    assert [len(o.outputs[0].token_ids) for o in outs] == list(range(1, 21))
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    it = llm.stream("abc", SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    next(it)
    next(it)
    assert llm.engine.block_manager.num_used_blocks > 0
    it.close()
    assert llm.engine.block_manager.num_used_blocks == 0 and not llm.engine.has_unfinished()


def test_chat_renders_the_template():
    llm = make_llm()
    out = llm.chat([{"role": "user", "content": "hi"}], G, use_tqdm=False)[0]
    assert out.prompt == "<user>hi<assistant>"


def test_generate_more_prompts_than_the_queue_holds():
    llm = make_llm(max_waiting=2, max_num_seqs=2)
    outs = llm.generate([f"prompt {i}" for i in range(9)], SamplingParams(max_tokens=3, temperature=0),
                        use_tqdm=False)
    assert len(outs) == 9 and all(o.finished for o in outs)


def test_queue_full_and_bad_requests_raise_clear_errors():
    llm = make_llm(max_waiting=1)
    eng = llm.engine
    eng.add_request("a", "hello", G)
    with pytest.raises(QueueFullError, match="queue is full"):
        eng.add_request("b", "hello", G)
    with pytest.raises(ValueError, match="already in flight"):
        eng.add_request("a", "hello", G)
    with pytest.raises(ValueError, match="context length"):
        eng.add_request("c", "x" * 600, G)
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("d", "", G)
    with pytest.raises(ValueError, match="temperature"):
        eng.add_request("e", "hi", SamplingParams(temperature=-1))
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        eng.add_request("f", [5, 999], G)
    with pytest.raises(ValueError, match="KV blocks"):
        make_llm(num_kv_blocks=2).engine.add_request("g", "hello", G)
    with pytest.raises(ValueError, match="unknown engine option"):
        make_llm(max_batch=3)
    with pytest.raises(ValueError, match="unknown model"):
        LLM(model="no-such-model")


def test_metrics_report_queue_kv_and_latency():
    llm = make_llm()
    llm.generate(PROMPTS, G, use_tqdm=False)
    m = llm.engine.metrics()
    for key in ("num_waiting", "num_running", "kv_blocks_used", "kv_blocks_free", "prefix_cache_hit_rate",
                "preemptions", "spec_acceptance_rate", "ttft_p50", "tpot_p50"):
        assert key in m
    assert m["kv_blocks_used"] == 0 and m["kv_blocks_free"] == 256
    assert len(m["ttft_history"]) == 4 and all(t > 0 for t in m["tpot_history"])
    assert m["generated_tokens"] == 80
