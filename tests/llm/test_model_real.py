"""SmolLM2-135M through our loader and paged forward equals transformers' LlamaForCausalLM on the same GGUF."""

from __future__ import annotations

import pytest
import torch

from tests.llm.conftest import PagedRunner

pytestmark = pytest.mark.llm_real

LOGITS_ATOL = 1e-3
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nList three primary colours.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a village by the sea, there lived",
]


def _hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0].float()


def test_logits_match_transformers(real_model, hf_reference, record_property):
    model, tok = real_model
    hf, _ = hf_reference
    worst = 0.0
    for prompt in PROMPTS[:3]:
        ids = tok.encode(prompt)
        ref = _hf_logits(hf, ids)
        dense = model.forward_dense(torch.tensor([ids]))[0]
        (paged,) = PagedRunner(model, num_blocks=32, block_size=16, shuffle_seed=1).step([("p", ids)])
        for ours in (dense, paged):
            diff = (ours - ref).abs().max().item()
            worst = max(worst, diff)
            assert diff < LOGITS_ATOL, f"max |logit diff| {diff:.2e} for {prompt!r}"
        assert torch.equal(dense.argmax(-1), ref.argmax(-1))
    record_property("max_abs_logit_diff", worst)
    print(f"max abs logit diff vs transformers: {worst:.3e}")


def _greedy_paged_batch(model, prompts: list[list[int]], n: int, eos: int) -> list[list[int]]:
    """Greedy decoding of several prompts at once through the paged forward (batched decode, ragged lengths)."""
    runner = PagedRunner(model, num_blocks=64, block_size=16, shuffle_seed=2)
    logits = runner.step([(str(i), ids) for i, ids in enumerate(prompts)], last_only=True)
    outs: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    while live:
        for i, lg in zip(live, logits):
            outs[i].append(int(lg[-1].argmax()))
        live = [i for i in live if len(outs[i]) < n and outs[i][-1] != eos]
        if live:
            logits = runner.step([(str(i), [outs[i][-1]]) for i in live])
    return outs


def test_greedy_generation_matches_transformers(real_model, hf_reference):
    model, tok = real_model
    hf, _ = hf_reference
    prompts = [tok.encode(p) for p in PROMPTS]
    ours = _greedy_paged_batch(model, prompts, 32, tok.eos_token_id)
    for prompt, ids, got in zip(PROMPTS, prompts, ours):
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=32, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        assert got == ref, f"{prompt!r}: ours {tok.decode(got)!r} vs transformers {tok.decode(ref)!r}"
        assert len(got) >= 8
