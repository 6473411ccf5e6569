"""loopstack.llm: a paged-KV, continuously batched LLM engine with an OpenAI-compatible server.

Heavy modules (torch) load lazily: `from loopstack.llm import LLM, SamplingParams`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]


def __getattr__(name: str) -> Any:
    """Import the public API from loopstack.llm.api on first use (PEP 562)."""
    if name in __all__:
        from loopstack.llm import api

        return getattr(api, name)
    raise AttributeError(f"module 'loopstack.llm' has no attribute {name!r}")
