"""Speculative decoding: drafters, the exact accept/reject rule, and a statistical test that speculation keeps the
target distribution on a tiny model (several thousand seeded draws against the exact marginals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from loopstack.llm.config import EngineConfig
from loopstack.llm.engine.llm_engine import LLMEngine
from loopstack.llm.engine.params import SamplingParams
from loopstack.llm.engine.sampler import make_generator
from loopstack.llm.engine.speculative import NgramDrafter, SelfSpecDrafter, accept_greedy, accept_sampled
from tests.llm.conftest import build_tiny_model


def test_ngram_drafter_copies_what_followed_the_latest_match():
    d = NgramDrafter(1, 3)
    toks = [1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 1, 2, 3]
    assert d.propose(toks, 2) == [5, 6]  # the 3-gram [1, 2, 3] last occurred before 5, 6
    assert d.propose(toks, 10) == [5, 6, 1, 2, 3]
    assert d.propose([7, 8, 9], 3) == []  # nothing recurs
    assert d.propose([4, 4], 3) == [4]
    assert NgramDrafter(2, 2).propose([1, 5, 2, 5], 2) == []  # only a 1-gram recurs


def test_default_skip_layers_keep_the_ends():
    skip = SelfSpecDrafter.default_skip_layers(30)
    assert 0 not in skip and 29 not in skip and 5 <= len(skip) < 30
    assert SelfSpecDrafter.default_skip_layers(2)  # something is skipped even for tiny models


def test_accept_greedy():
    assert accept_greedy([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]  # all accepted + bonus
    assert accept_greedy([5, 6, 7, 8], [5, 9, 7]) == [5, 6]  # first mismatch replaced by the target token
    assert accept_greedy([5], []) == [5]


def _rows(k: int, vocab: int, seed: int, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(k, vocab, generator=g) * scale).softmax(-1)


def _check(counts: np.ndarray, probs: torch.Tensor) -> float:
    """Chi-square p-value of counts against probs (cells with small expectation merged)."""
    exp = probs.double().numpy() * counts.sum()
    big = exp >= 5
    obs = np.append(counts[big], counts[~big].sum())
    e = np.append(exp[big], exp[~big].sum())
    keep = e > 0
    e = e[keep] * obs[keep].sum() / e[keep].sum()  # exact totals (rounding of the float probabilities)
    return float(chisquare(obs[keep], e).pvalue)


@pytest.mark.parametrize("point_mass", [False, True])
def test_accept_sampled_emits_target_distribution(point_mass):
    vocab, k, n = 6, 2, 6000
    p = _rows(k + 1, vocab, seed=1)
    q = _rows(k, vocab, seed=2)
    g = make_generator(7)
    first = np.zeros(vocab)
    second = np.zeros(vocab)
    bonus = np.zeros(vocab)
    for _ in range(n):
        drafts = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(k)]
        out = accept_sampled(p, drafts, None if point_mass else q, g)
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
        if len(out) == k + 1:
            bonus[out[k]] += 1
    assert _check(first, p[0]) > 1e-3
    assert _check(second, p[1]) > 1e-3
    assert _check(bonus, p[k]) > 1e-3
    assert 0 < bonus.sum() < n  # both accept-all and reject paths were taken


def test_accept_sampled_rejects_a_draft_the_target_never_picks():
    p = torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    out = accept_sampled(p, [2], None, make_generator(0))
    assert out == [1]


# ---- statistical test on a tiny model -------------------------------------------------------------------------
PROMPT = [5, 9, 17, 23, 9, 17, 30, 5, 9, 11, 17, 5]


def soft_tiny_model():
    """Tiny model whose layers matter (small embeddings, untied larger head): spread-out, layer-dependent outputs."""
    m = build_tiny_model(tie_embeddings=False, vocab_size=32)
    with torch.no_grad():
        m.embed_tokens.weight.mul_(0.1)
        m.lm_head.weight.mul_(3.0)
    return m


def exact_marginals(model, prompt: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distributions of the 2nd and 3rd sampled tokens (temperature 1), marginalising earlier tokens."""
    v = model.config.vocab_size
    x = torch.tensor([prompt])
    p1 = model.forward_dense(x)[0, -1].softmax(-1)
    seq2 = torch.cat([x.repeat(v, 1), torch.arange(v)[:, None]], 1)
    p2_given = model.forward_dense(seq2)[:, -1].softmax(-1)  # [t1, t2]
    m2 = p1 @ p2_given
    seq3 = torch.cat([seq2.repeat_interleave(v, 0), torch.arange(v).repeat(v)[:, None]], 1)  # row t1 * v + t2
    p3_given = model.forward_dense(seq3)[:, -1].softmax(-1).view(v, v, v)
    m3 = torch.einsum("a,ab,abc->c", p1, p2_given, p3_given)
    return m2.double(), m3.double()


def sampled_counts(model, method: str | None, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    cfg = EngineConfig(block_size=4, num_kv_blocks=2048, max_num_seqs=256, max_num_batched_tokens=4096,
                       max_waiting=None, speculative_method=method, num_speculative_tokens=2,
                       spec_skip_layers=(1,))
    eng = LLMEngine(model, None, cfg)
    v = model.config.vocab_size
    c2, c3 = np.zeros(v), np.zeros(v)
    for i in range(n):
        eng.add_request(str(i), PROMPT, SamplingParams(max_tokens=3, temperature=1.0, seed=i, ignore_eos=True))
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                toks = out.outputs[0].token_ids
                c2[toks[1]] += 1
                c3[toks[2]] += 1
    return c2, c3, eng.metrics()


@pytest.fixture(scope="module")
def soft_model_and_marginals():
    m = soft_tiny_model()
    return m, exact_marginals(m, PROMPT)


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "self", "ngram"])
def test_speculation_keeps_the_sampled_token_distribution(soft_model_and_marginals, method):
    model, (m2, m3) = soft_model_and_marginals
    c2, c3, metrics = sampled_counts(model, method, n=2000)
    assert _check(c2, m2) > 1e-3, "2nd-token distribution differs from the exact target marginal"
    assert _check(c3, m3) > 1e-3, "3rd-token distribution differs from the exact target marginal"
    if method is not None:
        assert metrics["spec_proposed_tokens"] > 300
        assert 0 < metrics["spec_accepted_tokens"] < metrics["spec_proposed_tokens"]  # accepts and rejections
        if method == "self":
            assert 0.05 < metrics["spec_acceptance_rate"] < 0.95


@pytest.mark.slow
def test_the_statistical_check_detects_a_biased_sampler(soft_model_and_marginals, monkeypatch):
    """Always accepting drafts (a wrong rule) must fail the same check, so the test above can fail."""
    import loopstack.llm.engine.llm_engine as le
    model, (m2, _) = soft_model_and_marginals

    def always_accept(logits, params, drafts, q, generator):
        return list(drafts) + [int(logits[len(drafts)].argmax())]

    def always_accept_batch(logits, spans, params, drafts, qs, generators):
        return [always_accept(logits[r:r + n], None, d, None, None) for (r, n), d in zip(spans, drafts)]

    monkeypatch.setattr(le, "verify_batch", always_accept_batch)
    c2, _, _ = sampled_counts(model, "self", n=1000)
    assert _check(c2, m2) < 1e-6
