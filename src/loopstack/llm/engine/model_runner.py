"""Turns a scheduled batch into flat model inputs plus paged-attention metadata, and runs the forward pass."""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING

import torch

from loopstack.llm.engine.block_manager import BlockManager
from loopstack.llm.models.attention import AttnMetadata, KVCache

if TYPE_CHECKING:
    from loopstack.llm.engine.sequence import Sequence
    from loopstack.llm.models.llama import LlamaForCausalLM


class ModelRunner:
    """Owns the KV cache tensors; builds input_ids, positions, slot mapping and block tables with few allocations."""

    def __init__(self, model: LlamaForCausalLM, kv: KVCache, block_manager: BlockManager) -> None:
        self.model = model
        self.kv = kv
        self.bm = block_manager
        self.block_size = block_manager.block_size

    def _block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        tables = [self.bm.block_tables[s.seq_id] for s in seqs]
        width = max(len(t) for t in tables)
        return torch.tensor([t + [0] * (width - len(t)) if len(t) < width else t for t in tables], dtype=torch.long)

    def build(self, seqs: list[Sequence], starts: list[int], tokens: list[list[int]]
              ) -> tuple[torch.Tensor, torch.Tensor, AttnMetadata]:
        """input_ids [T], positions [T] and metadata for the new tokens[i] of seqs[i], placed from starts[i] on."""
        bs = self.block_size
        qlens = [len(t) for t in tokens]
        block_tables = self._block_tables(seqs)
        if all(q == 1 for q in qlens):
            input_ids = torch.tensor([t[0] for t in tokens], dtype=torch.long)
            positions = torch.tensor(starts, dtype=torch.long)
            rows = torch.arange(len(seqs))
        else:
            input_ids = torch.tensor(list(chain.from_iterable(tokens)), dtype=torch.long)
            q = torch.tensor(qlens, dtype=torch.long)
            rows = torch.repeat_interleave(torch.arange(len(seqs)), q)
            offsets = torch.arange(input_ids.numel()) - (torch.cumsum(q, 0) - q).index_select(0, rows)
            positions = torch.tensor(starts, dtype=torch.long).index_select(0, rows) + offsets
        slot_mapping = block_tables[rows, positions // bs] * bs + positions % bs
        context_lens = [s + q for s, q in zip(starts, qlens)]
        meta = AttnMetadata(qlens, context_lens, block_tables, slot_mapping, bs)
        return input_ids, positions, meta

    def forward(self, seqs: list[Sequence], starts: list[int], tokens: list[list[int]], num_logits: list[int],
                skip_layers: frozenset[int] = frozenset()) -> torch.Tensor:
        """Run the model; returns logits for the last num_logits[i] query rows of each sequence, in order."""
        input_ids, positions, meta = self.build(seqs, starts, tokens)
        total = input_ids.numel()
        if sum(num_logits) == total:
            indices = None
        else:
            idx: list[int] = []
            end = 0
            for toks, n in zip(tokens, num_logits):
                end += len(toks)
                idx.extend(range(end - n, end))
            indices = torch.tensor(idx, dtype=torch.long)
        with torch.inference_mode():
            return self.model(input_ids, positions, meta, self.kv, logits_indices=indices, skip_layers=skip_layers)

    def forward_decode(self, seqs: list[Sequence], last_tokens: list[int], offset: int = 0,
                       skip_layers: frozenset[int] = frozenset()) -> torch.Tensor:
        """One token per sequence at position num_computed_tokens + offset (draft steps); logits [S, vocab]."""
        starts = [s.num_computed_tokens + offset for s in seqs]
        return self.forward(seqs, starts, [[t] for t in last_tokens], [1] * len(seqs), skip_layers)
