"""Token sampling from logits: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

The whole batch is handled in a few vectorised calls: an all-greedy batch is one argmax; otherwise the
rows' distributions are built together and sampled with the exponential race (argmax of p / E, E ~ Exp(1)),
where seeded rows draw E from their own torch.Generator so their tokens do not depend on the batch around them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loopstack.llm.engine.params import SamplingParams

_MIN_TEMPERATURE = 1e-5


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded for one request, or None to use the global RNG."""
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def processed_logits(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Logits after temperature, top-k and top-p (masked entries -inf); rows follow params. Not for greedy rows."""
    x = logits
    temps = [max(p.temperature, _MIN_TEMPERATURE) for p in params]
    if any(t != 1.0 for t in temps):
        x = x / torch.tensor(temps, dtype=x.dtype).unsqueeze(1)
    vocab = x.shape[-1]
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if any(ks):
        kmax = max(ks)
        top = torch.topk(x, kmax, dim=-1).values
        kth = top.gather(1, torch.tensor([max(k, 1) - 1 for k in ks]).unsqueeze(1))
        kth = torch.where(torch.tensor(ks).unsqueeze(1) > 0, kth, torch.full_like(kth, float("-inf")))
        x = x.masked_fill(x < kth, float("-inf"))
    ps = [p.top_p for p in params]
    if any(p < 1.0 for p in ps):
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
        drop = mass_before >= torch.tensor(ps, dtype=probs.dtype).unsqueeze(1)
        drop[:, 0] = False  # always keep the best token
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.empty_like(x).scatter_(1, order, sorted_x)
    return x


def target_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each row samples from: one-hot argmax for greedy rows, softmax of processed logits else."""
    out = torch.empty_like(logits)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    rand = [i for i, p in enumerate(params) if not p.greedy]
    if greedy:
        idx = torch.tensor(greedy)
        onehot = torch.zeros(len(greedy), logits.shape[-1], dtype=logits.dtype)
        onehot.scatter_(1, logits.index_select(0, idx).argmax(dim=-1, keepdim=True), 1.0)
        out.index_copy_(0, idx, onehot)
    if rand:
        idx = torch.tensor(rand)
        probs = processed_logits(logits.index_select(0, idx), [params[i] for i in rand]).softmax(dim=-1)
        out.index_copy_(0, idx, probs)
    return out


def exponential_noise(shape: tuple[int, int], generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Exp(1) noise [rows, vocab]; rows with a generator draw from it, the rest share one draw from the global RNG."""
    noise = torch.empty(shape)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if len(unseeded) == shape[0]:
        return noise.exponential_()
    if unseeded:
        idx = torch.tensor(unseeded)
        noise.index_copy_(0, idx, torch.empty(len(unseeded), shape[1]).exponential_())
    for i, g in enumerate(generators):
        if g is not None:
            noise[i].exponential_(generator=g)
    return noise


def sample_from_probs(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row from probability rows (exponential race: argmax p / E)."""
    return (probs / exponential_noise(tuple(probs.shape), generators)).argmax(dim=-1)


def uniform(generator: torch.Generator | None) -> float:
    """One U(0,1) draw from the request's generator (or the global RNG)."""
    return float(torch.rand(1, generator=generator))


def sample(logits: torch.Tensor, params: Sequence[SamplingParams],
           generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Next token per row (int64 [N]); one argmax when every row is greedy."""
    greedy = [p.greedy for p in params]
    if all(greedy):
        return logits.argmax(dim=-1)
    if not any(greedy):
        probs = processed_logits(logits, params).softmax(dim=-1)
        return sample_from_probs(probs, generators)
    tokens = logits.argmax(dim=-1)
    rand = [i for i, g in enumerate(greedy) if not g]
    idx = torch.tensor(rand)
    probs = processed_logits(logits.index_select(0, idx), [params[i] for i in rand]).softmax(dim=-1)
    tokens.index_copy_(0, idx, sample_from_probs(probs, [generators[i] for i in rand]))
    return tokens


def top_logprobs(logits: torch.Tensor, tokens: torch.Tensor, nums: Sequence[int]) -> list[dict[int, float]]:
    """Per row: {chosen token: logprob} plus the row's top-n alternatives, from the model's raw distribution."""
    logp = logits.float().log_softmax(dim=-1)
    chosen = logp.gather(1, tokens.view(-1, 1)).squeeze(1).tolist()
    kmax = max(nums) if nums else 0
    if kmax:
        vals, ids = torch.topk(logp, kmax, dim=-1)
        vals_l, ids_l = vals.tolist(), ids.tolist()
    out = []
    for i, tok in enumerate(tokens.tolist()):
        entry = {tok: chosen[i]}
        for j in range(nums[i]):
            entry.setdefault(ids_l[i][j], vals_l[i][j])
        out.append(entry)
    return out
