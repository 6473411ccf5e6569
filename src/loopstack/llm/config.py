"""Typed configuration for the LLM stack: model shapes (LlamaConfig) and engine knobs (EngineConfig)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_CACHE_DIR = Path("~/.cache/loopstack/llm")
CACHE_ENV = "LOOPSTACK_LLM_CACHE_DIR"
KV_CACHE_DTYPES = ("float32", "float16")


def default_cache_dir() -> Path:
    """Cache folder for converted weights and built kernels: $LOOPSTACK_LLM_CACHE_DIR, else ~/.cache/loopstack/llm."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-architecture model; everything the torch module needs to allocate itself."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_position: int = 2048
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def q_size(self) -> int:
        """Width of the query projection output (num_heads * head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of each of the key and value projection outputs (num_kv_heads * head_dim)."""
        return self.num_kv_heads * self.head_dim

    @classmethod
    def tiny(cls, **overrides: object) -> LlamaConfig:
        """A small random-weight-friendly shape for fast tests (GQA with 4 query heads over 2 KV heads)."""
        base = cls(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_eps=1e-5, max_position=512,
            tie_embeddings=True, bos_token_id=1, eos_token_id=2,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class EngineConfig:
    """Engine knobs: KV budget, batching limits and features; vLLM-style names."""

    block_size: int = 16
    num_kv_blocks: int | None = None  # explicit block count; wins over kv_cache_mb
    kv_cache_mb: float = 256.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None = the model's max_position
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    cache_dir: Path = field(default_factory=default_cache_dir)  # $LOOPSTACK_LLM_CACHE_DIR, else ~/.cache/...
    # [ENGINE helper] queue limit (QueueFullError / HTTP 429 beyond it) and speculative decoding
    max_waiting: int | None = 1024
    speculative_method: str | None = None  # None | "ngram" (prompt lookup) | "self" (layer-skipping draft)
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 4
    spec_skip_layers: tuple[int, ...] | None = None  # self drafter: layers to skip (None = a default set)
    # KV cache element type: float32 (exact) or float16 (half the memory and memory traffic per decode step;
    # K/V rounded to 11 significant bits, so greedy outputs can differ from float32's on near-ties)
    kv_cache_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir).expanduser()
        if self.block_size <= 0:
            raise ValueError(f"EngineConfig.block_size must be positive, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks <= 0:
            raise ValueError(f"EngineConfig.num_kv_blocks must be positive, got {self.num_kv_blocks}")
        if not 0 < self.kv_cache_mb < math.inf:   # also refuses NaN
            raise ValueError(f"EngineConfig.kv_cache_mb must be positive (a finite number of MB), got "
                             f"{self.kv_cache_mb}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"EngineConfig.max_model_len must be >= 2 (a prompt token and a generated one) or "
                             f"None (the model's), got {self.max_model_len}")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("EngineConfig.max_num_seqs and max_num_batched_tokens must be positive")
        if self.max_waiting is not None and self.max_waiting <= 0:
            raise ValueError(f"EngineConfig.max_waiting must be positive or None, got {self.max_waiting}")
        if self.speculative_method not in (None, "ngram", "self"):
            raise ValueError(f"EngineConfig.speculative_method must be None, 'ngram' or 'self', "
                             f"got {self.speculative_method!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"EngineConfig.kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.num_speculative_tokens < 1:
            raise ValueError(f"EngineConfig.num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("EngineConfig needs 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                             f"{self.prompt_lookup_min} and {self.prompt_lookup_max}")

    def resolve_num_blocks(self, model: LlamaConfig) -> int:
        """Number of KV blocks: num_kv_blocks if set, else as many as fit in kv_cache_mb for this model and
        kv_cache_dtype."""
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        dtype_bytes = 2 if self.kv_cache_dtype == "float16" else 4
        per_block = 2 * model.num_layers * self.block_size * model.num_kv_heads * model.head_dim * dtype_bytes
        n = int(self.kv_cache_mb * 1024 * 1024 // per_block)
        if n < 1:
            raise ValueError(
                f"kv_cache_mb={self.kv_cache_mb} is too small for one KV block ({per_block} bytes); raise it"
            )
        return n
