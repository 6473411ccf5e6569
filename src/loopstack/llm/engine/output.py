"""Per-sequence output processing (torch-free): appending tokens, detokenizing, stop conditions, output objects."""

from __future__ import annotations

import time
from typing import Any

from loopstack.llm.engine.params import CompletionOutput, RequestOutput
from loopstack.llm.engine.sequence import Sequence, SequenceStatus


class _FallbackDecoder:
    """Incremental decoding for tokenizers without incremental_decoder(): decode one token at a time."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def feed(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


def make_detokenizer(tokenizer: Any) -> Any:
    """The tokenizer's streaming decoder, a per-token fallback, or None without a tokenizer."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "incremental_decoder"):
        return tokenizer.incremental_decoder()
    return _FallbackDecoder(tokenizer)


def hold_back(text: str, stops: tuple[str, ...]) -> str:
    """Text without a tail that could still grow into a stop string, so streamed text never shrinks."""
    cut = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                cut = max(cut, k)
                break
    return text[:len(text) - cut]


def append_tokens(seq: Sequence, tokens: list[int], logprobs: list[dict[int, float]] | None,
                  eos_token_id: int | None, max_model_len: int) -> SequenceStatus | None:
    """Append emitted tokens one by one until a stop condition; returns the finish status or None."""
    p = seq.params
    stops = p.stop
    max_stop = max((len(s) for s in stops), default=0)
    now = time.perf_counter()
    if seq.first_token_time is None and tokens:
        seq.first_token_time = now
    for j, tok in enumerate(tokens):
        seq.token_ids.append(tok)
        if seq.logprobs is not None and logprobs is not None:
            seq.logprobs.append(logprobs[j])
        if seq.detokenizer is not None:
            new = seq.detokenizer.feed(tok)
            if new:
                seq.output_text += new
                if stops:
                    text = seq.output_text
                    lo = max(0, len(text) - len(new) - max_stop + 1)
                    hits = [i for i in (text.find(s, lo) for s in stops) if i >= 0]
                    if hits:
                        seq.output_text = text[:min(hits)]
                        return SequenceStatus.FINISHED_STOPPED
        if tok in p.stop_token_ids or (not p.ignore_eos and tok == eos_token_id):
            return _flushed(seq, SequenceStatus.FINISHED_STOPPED)
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= max_model_len:
            return _flushed(seq, SequenceStatus.FINISHED_LENGTH)
    return None


def _flushed(seq: Sequence, status: SequenceStatus) -> SequenceStatus:
    """`status`, after adding the bytes the detokenizer still holds: a character cut off by the end of the
    sequence shows as U+FFFD (as a decode of all its tokens gives), not silently dropped."""
    flush = getattr(seq.detokenizer, "flush", None)
    if flush is not None:
        seq.output_text += flush()
    return status


def request_output(seq: Sequence) -> RequestOutput:
    """The sequence's cumulative output (text held back near a possible stop string while running)."""
    finished = seq.status.finished
    text = seq.output_text if finished or not seq.params.stop else hold_back(seq.output_text, seq.params.stop)
    reason = seq.status.value if finished else None
    comp = CompletionOutput(text, seq.output_token_ids, reason,
                            list(seq.logprobs) if seq.logprobs is not None else None)
    metrics: dict[str, float] = {}
    if seq.first_token_time is not None:
        metrics["ttft"] = seq.first_token_time - seq.arrival_time
    if finished and seq.finish_time is not None and seq.first_token_time is not None and seq.num_output_tokens > 1:
        metrics["tpot"] = (seq.finish_time - seq.first_token_time) / (seq.num_output_tokens - 1)
    return RequestOutput(seq.request_id, seq.prompt_token_ids, [comp], finished, seq.prompt, metrics)
