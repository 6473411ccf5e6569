"""LLMEngine on the tiny random model: greedy outputs equal a plain dense greedy loop under batching, preemption,
prefix-cache hits, chunked prefill and speculative decoding; abort frees blocks at once."""

from __future__ import annotations

import random

import pytest
import torch

from loopstack.llm.config import EngineConfig
from loopstack.llm.engine.llm_engine import LLMEngine
from loopstack.llm.engine.params import SamplingParams
from loopstack.llm.engine.speculative import NgramDrafter
from tests.llm.conftest import build_tiny_model

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def dense_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The reference: re-run the whole sequence through forward_dense for every new token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model.forward_dense(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def run(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams = GREEDY) -> dict[str, list[int]]:
    for rid, p in prompts.items():
        engine.add_request(rid, p, params)
    done: dict[str, list[int]] = {}
    for _ in range(10_000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    assert engine.block_manager.num_used_blocks == 0, "finished requests must return every block"
    return done


def random_prompts(n: int, lo: int, hi: int, seed: int = 0, vocab: int = 128) -> dict[str, list[int]]:
    rng = random.Random(seed)
    return {f"r{i}": [rng.randrange(3, vocab) for _ in range(rng.randrange(lo, hi))] for i in range(n)}


def engine(model, **kw) -> LLMEngine:
    base = dict(block_size=4, num_kv_blocks=256, max_num_seqs=16, max_num_batched_tokens=256)
    base.update(kw)
    return LLMEngine(model, None, EngineConfig(**base))


@pytest.fixture
def model():
    """The tiny random model, rescaled so every output depends on the whole context and on every layer.

    (With unit-scale tied embeddings the tiny model's argmax is decided by the last token alone, so a broken KV
    cache would go unnoticed; small embeddings and a separate, larger head make attention decisive.)
    """
    m = build_tiny_model(tie_embeddings=False)
    with torch.no_grad():
        m.embed_tokens.weight.mul_(0.1)
        m.lm_head.weight.mul_(10.0)
    return m


def test_reference_model_depends_on_context(model):
    rng = random.Random(0)
    changed = 0
    for _ in range(20):
        ids = [rng.randrange(3, 128) for _ in range(20)]
        other = list(ids)
        other[3] = (other[3] + 1) % 128
        a, b = (int(model.forward_dense(torch.tensor([x]))[0, -1].argmax()) for x in (ids, other))
        changed += a != b
    assert changed >= 4  # an early token changes the next-token argmax: the engine tests can catch KV bugs


@pytest.fixture
def refs(model):
    cache: dict[tuple[int, ...], list[int]] = {}

    def ref(prompt: list[int], n: int = GREEDY.max_tokens) -> list[int]:
        key = (*prompt, -n)
        if key not in cache:
            cache[key] = dense_greedy(model, prompt, n)
        return cache[key]
    return ref


def test_batched_requests_of_different_lengths_match_dense_greedy(model, refs):
    prompts = random_prompts(10, 2, 40)
    eng = engine(model, max_num_seqs=6)
    out = run(eng, prompts)
    assert out == {rid: refs(p) for rid, p in prompts.items()}
    assert eng.metrics()["finished_requests"] == 10


def test_tiny_kv_budget_forces_preemption_and_outputs_stay_identical(model, refs):
    prompts = random_prompts(8, 10, 30, seed=1)
    eng = engine(model, num_kv_blocks=24, enable_prefix_caching=False)
    out = run(eng, prompts)
    assert eng.metrics()["preemptions"] > 0
    assert out == {rid: refs(p) for rid, p in prompts.items()}


def test_prefix_cache_hits_with_shared_prefixes(model, refs):
    system = random_prompts(1, 23, 24, seed=2)["r0"]
    tails = random_prompts(6, 1, 9, seed=3)
    prompts = {rid: system + t for rid, t in tails.items()}
    eng = engine(model)
    first = run(eng, {"r0": prompts["r0"]})
    rest = run(eng, {rid: p for rid, p in prompts.items() if rid != "r0"})
    m = eng.metrics()
    assert m["prefix_cache_hits"] >= 5 * 5  # 5 later requests each reuse the 5 full blocks of the shared 23 tokens
    assert 0 < m["prefix_cache_hit_rate"] <= 1
    assert {**first, **rest} == {rid: refs(p) for rid, p in prompts.items()}
    # the same prompt again hits its own generated-free prompt blocks and still matches
    again = run(eng, {"again": prompts["r3"]})
    assert again["again"] == refs(prompts["r3"])


def test_identical_prompts_in_one_batch_and_full_block_prompts(model, refs):
    p = random_prompts(1, 16, 17, seed=4)["r0"]  # exactly 4 full blocks: the last one must be recomputed
    eng = engine(model)
    run(eng, {"a": p})
    out = run(eng, {"b": p, "c": p})
    assert out == {"b": refs(p), "c": refs(p)}
    assert eng.block_manager.prefix_hits >= 3


def test_chunked_prefill_with_a_small_token_budget(model, refs):
    prompts = random_prompts(5, 20, 60, seed=5)
    eng = engine(model, max_num_batched_tokens=7)
    out = run(eng, prompts)
    assert out == {rid: refs(p) for rid, p in prompts.items()}
    assert eng.metrics()["steps"] > sum(len(p) for p in prompts.values()) // 7


def test_long_prompt_does_not_stall_running_decodes(model):
    eng = engine(model, max_num_batched_tokens=8)
    eng.add_request("short", [5, 6, 7], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    eng.step()
    eng.add_request("long", list(range(3, 100)), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    for _ in range(10):  # the long prompt needs ~13 steps of chunks; the short one gets a token every step
        outs = {o.request_id: o for o in eng.step()}
        assert "short" in outs
    assert len(outs["short"].outputs[0].token_ids) == 11


@pytest.mark.parametrize("method", ["ngram", "self"])
def test_speculative_decoding_greedy_is_token_identical(model, refs, method):
    rng = random.Random(6)
    motif = [rng.randrange(3, 128) for _ in range(5)]
    prompts = {f"r{i}": motif * 3 + [rng.randrange(3, 128) for _ in range(i)] for i in range(6)}
    prompts.update(random_prompts(3, 5, 20, seed=7))
    eng = engine(model, speculative_method=method, num_speculative_tokens=3, spec_skip_layers=(1,))
    out = run(eng, {k: v for k, v in prompts.items()})
    assert out == {rid: refs(p) for rid, p in prompts.items()}
    assert eng.metrics()["spec_accepted_tokens"] > 0


def test_rejected_drafts_leave_no_trace_in_kv_or_prefix_cache(model, refs, monkeypatch):
    """A drafter that is mostly wrong: outputs still match, and cached block hashes only cover real tokens."""
    rng = random.Random(8)
    real = NgramDrafter.propose

    def noisy(self, token_ids, k):
        return [rng.randrange(3, 128) if rng.random() < 0.7 else t for t in real(self, token_ids, k)] or \
            [rng.randrange(3, 128) for _ in range(k)]

    monkeypatch.setattr(NgramDrafter, "propose", noisy)
    prompts = random_prompts(6, 3, 30, seed=9)
    eng = engine(model, speculative_method="ngram", num_speculative_tokens=4)
    for rid, p in prompts.items():
        eng.add_request(rid, p, GREEDY)
    done = {}
    bm = eng.block_manager
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        for seq in list(eng._seqs.values()):
            table = bm.block_tables.get(seq.seq_id, [])
            for i, block in enumerate(table):
                key = bm._block_key[block]
                if key is not None and bm._block_hash[block] is not None:
                    assert list(key[1]) == seq.token_ids[i * 4:(i + 1) * 4]
    m = eng.metrics()
    assert 0 < m["spec_accepted_tokens"] < m["spec_proposed_tokens"]
    assert done == {rid: refs(p) for rid, p in prompts.items()}
    # later requests sharing those sequences' tokens reuse exactly-correct cached blocks
    again = run(eng, {"x": prompts["r1"] + done["r1"][:5]})
    assert again["x"] == refs(prompts["r1"] + done["r1"][:5])


def test_abort_mid_way_returns_all_blocks(model):
    eng = engine(model, max_num_seqs=2)
    for rid, p in random_prompts(4, 10, 20).items():
        eng.add_request(rid, p, SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    eng.step()
    eng.step()
    assert eng.block_manager.num_used_blocks > 0 and eng.metrics()["num_waiting"] == 2
    eng.abort("r0")  # running
    eng.abort("r3")  # waiting
    eng.abort("unknown")  # ignored
    for _ in range(3):
        eng.step()
    eng.abort("r1")
    eng.abort("r2")
    assert eng.block_manager.num_used_blocks == 0
    assert not eng.has_unfinished()
    assert eng.step() == []


def test_mixed_greedy_and_sampled_requests_in_one_batch(model, refs):
    prompts = random_prompts(6, 4, 20, seed=10)
    eng = engine(model)
    for i, (rid, p) in enumerate(prompts.items()):
        params = GREEDY if i % 2 == 0 else SamplingParams(max_tokens=12, temperature=1.0, top_k=5, seed=i,
                                                          ignore_eos=True)
        eng.add_request(rid, p, params)
    done = {}
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    for i, (rid, p) in enumerate(prompts.items()):
        if i % 2 == 0:
            assert done[rid] == refs(p)
        else:
            assert len(done[rid]) == 12


def test_requests_admitted_in_the_same_step_share_prefix_blocks(model, refs):
    system = random_prompts(1, 30, 31, seed=11)["r0"]
    prompts = {rid: system + t for rid, t in random_prompts(4, 1, 6, seed=12).items()}
    eng = engine(model)
    for rid, p in prompts.items():
        eng.add_request(rid, p, GREEDY)
    batch = eng.scheduler.schedule()  # peek: all four are admitted together; three reuse the first one's blocks
    assert len(batch.seqs) == 4 and batch.num_new_tokens[0] == len(prompts["r0"])
    assert all(n <= 8 for n in batch.num_new_tokens[1:])
    eng.scheduler.recover(batch)  # put them back untouched and let the engine run normally
    out = run(eng, {})
    assert out == {rid: refs(p) for rid, p in prompts.items()}
    assert eng.block_manager.prefix_hits >= 3 * 7


def test_a_failed_step_leaves_no_half_computed_blocks_cached(model, refs, monkeypatch):
    system = random_prompts(1, 30, 31, seed=13)["r0"]
    prompts = {rid: system + t for rid, t in random_prompts(3, 1, 6, seed=14).items()}
    eng = engine(model)
    for rid, p in prompts.items():
        eng.add_request(rid, p, GREEDY)
    real = eng.runner.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(eng.runner, "forward", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        eng.step()
    assert eng.block_manager.num_cached_blocks == 0 and eng.block_manager.num_used_blocks == 0
    out = run(eng, {})
    assert out == {rid: refs(p) for rid, p in prompts.items()}
