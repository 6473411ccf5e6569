"""Llama-architecture causal LM (RMSNorm, RoPE, GQA, SwiGLU) with a paged-KV forward and a dense reference."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loopstack.llm.config import LlamaConfig
from loopstack.llm.models.attention import AttnMetadata, KVCache, paged_attention, write_kv


def rope_tables(config: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_position, head_dim/2], computed in float32 exactly as transformers does."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.outer(torch.arange(config.max_position, dtype=torch.float32), inv_freq)
    return freqs.cos().contiguous(), freqs.sin().contiguous()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [..., T, heads, D] with cos/sin [..., T, 1, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# MKL's packed-weight sgemm skips re-packing the weight on every call: 20-40% faster at decode batch sizes on
# CPU, and up to 1.9x on the 4-16 rows of a speculative verification step (F.linear re-packs the whole weight
# for every small GEMM). Below 16 rows it rounds differently from F.linear (within float32 rounding); 1-3 rows
# stay on F.linear, whose GEMV is faster there.
PACKED_MIN_ROWS = 4


class PackedLinear:
    """F.linear through MKL's pre-packed weight when available; falls back to F.linear (small batches, no MKL,
    or a weight modified in place since packing)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.version = weight._version
        self.packed: torch.Tensor | None = None
        if torch.backends.mkl.is_available() and weight.dtype == torch.float32 and weight.device.type == "cpu":
            try:
                self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), 64)
            except (RuntimeError, AttributeError):
                self.packed = None

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [M, in] @ weight.T; `weight` must be the tensor this was packed from (else plain F.linear)."""
        m = x.shape[0]
        if (self.packed is None or m < PACKED_MIN_ROWS or x.dim() != 2 or weight is not self.weight
                or weight._version != self.version):
            return F.linear(x, weight)
        return torch.ops.mkl._mkl_linear(x, self.packed, weight, None, m)


class DecoderLayer(nn.Module):
    """One transformer block with fused QKV and fused gate/up projections."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.input_norm = nn.Parameter(torch.ones(h))
        self.qkv_proj = nn.Linear(h, config.q_size + 2 * config.kv_size, bias=False)
        self.o_proj = nn.Linear(config.q_size, h, bias=False)
        self.post_norm = nn.Parameter(torch.ones(h))
        self.gate_up_proj = nn.Linear(h, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, h, bias=False)

    def mlp(self, x: torch.Tensor, linear: Any = F.linear) -> torch.Tensor:
        """SwiGLU: down(silu(gate(x)) * up(x)); F.linear directly to skip nn.Module call overhead per layer."""
        gate, up = linear(x, self.gate_up_proj.weight).chunk(2, dim=-1)
        return linear(F.silu(gate).mul_(up), self.down_proj.weight)


class LlamaForCausalLM(nn.Module):
    """Llama causal LM; `forward` reads/writes a paged KV cache, `forward_dense` is the cache-free reference."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size))
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.config.rms_eps)

    def _logits(self, x: torch.Tensor, linear: Any = F.linear) -> torch.Tensor:
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return linear(self._rms(x, self.norm), w)

    def pack_weights(self) -> None:
        """Pre-pack every projection and the LM head for MKL (about doubles weight memory; paged forward only)."""
        packs: dict[int, PackedLinear] = {}
        ws = [w for layer in self.layers for w in (layer.qkv_proj.weight, layer.o_proj.weight,
                                                   layer.gate_up_proj.weight, layer.down_proj.weight)]
        ws.append(self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight)
        for w in ws:
            packs[id(w)] = PackedLinear(w)
        self._packs = packs

    def _linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        pack = self.__dict__.get("_packs", {}).get(id(w))
        return F.linear(x, w) if pack is None else pack(x, w)

    def _check_positions(self, positions: torch.Tensor) -> None:
        if positions.numel() and int(positions.max()) >= self.config.max_position:
            raise ValueError(
                f"position {int(positions.max())} exceeds the model's max_position {self.config.max_position}; "
                "shorten the prompt or max_tokens"
            )

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttnMetadata,
        kv: KVCache,
        logits_indices: torch.Tensor | None = None,
        skip_layers: frozenset[int] = frozenset(),
    ) -> torch.Tensor:
        """Paged forward over T flattened new tokens; writes their K/V and returns float32 logits for chosen rows."""
        cfg = self.config
        t = input_ids.shape[0]
        self._check_positions(positions)
        nh, nkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        cos = self.rope_cos.index_select(0, positions).unsqueeze(1)  # [T, 1, D/2]
        sin = self.rope_sin.index_select(0, positions).unsqueeze(1)
        # validates and normalises index dtypes once for all layers; short queries go to the native kernel
        meta.plan(kv.k[0, 0].nbytes, use_kernel=True)
        slots = meta.slot_mapping
        linear = self._linear if self.__dict__.get("_packs") else F.linear
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            if i in skip_layers:
                continue
            qkv = linear(self._rms(x, layer.input_norm), layer.qkv_proj.weight)
            qk = apply_rope(qkv[:, : (nh + nkv) * d].view(t, nh + nkv, d), cos, sin)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, (nh + nkv) * d:].view(t, nkv, d)
            write_kv(kv, i, k, v, slots)
            x = x + linear(paged_attention(q, k, v, kv, i, meta), layer.o_proj.weight)
            x = x + layer.mlp(self._rms(x, layer.post_norm), linear)
        if logits_indices is not None:
            x = x.index_select(0, logits_indices)
        return self._logits(x, linear)

    @torch.inference_mode()
    def forward_dense(self, input_ids: torch.Tensor, skip_layers: frozenset[int] = frozenset()) -> torch.Tensor:
        """Reference forward without a cache: [B, L] token ids -> [B, L, vocab] logits (causal)."""
        cfg = self.config
        b, seq = input_ids.shape
        positions = torch.arange(seq)
        self._check_positions(positions)
        nh, nkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        cos = self.rope_cos[:seq].view(1, seq, 1, d // 2)
        sin = self.rope_sin[:seq].view(1, seq, 1, d // 2)
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            if i in skip_layers:
                continue
            qkv = layer.qkv_proj(self._rms(x, layer.input_norm))
            qk = apply_rope(qkv[..., : (nh + nkv) * d].view(b, seq, nh + nkv, d), cos, sin)
            q, k = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2)
            v = qkv[..., (nh + nkv) * d:].view(b, seq, nkv, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nh != nkv)
            x = x + layer.o_proj(o.transpose(1, 2).reshape(b, seq, nh * d))
            x = x + layer.mlp(self._rms(x, layer.post_norm))
        return self._logits(x)

    @classmethod
    def from_state_dict(cls, config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> LlamaForCausalLM:
        """Build without random init and adopt the given float32 tensors as parameters (no copies)."""
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        cos, sin = rope_tables(config)
        model.rope_cos, model.rope_sin = cos, sin
        return model.eval()
