"""The LLM engine: block manager, scheduler, sampler, speculative decoding, model runner and LLMEngine.

Torch-free parts (block_manager, scheduler, sequence, params) import without torch; LLMEngine is loaded lazily.
"""

from __future__ import annotations

from typing import Any

from loopstack.llm.engine.params import CompletionOutput, QueueFullError, RequestOutput, SamplingParams

__all__ = ["CompletionOutput", "LLMEngine", "QueueFullError", "RequestOutput", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name == "LLMEngine":
        from loopstack.llm.engine.llm_engine import LLMEngine
        return LLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
