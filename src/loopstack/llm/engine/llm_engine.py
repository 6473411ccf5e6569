"""LLMEngine: requests in, one scheduler iteration per step(), cumulative RequestOutputs out."""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import time
from collections import deque
from typing import Any

import torch

from loopstack.llm.config import EngineConfig
from loopstack.llm.engine.block_manager import BlockManager
from loopstack.llm.engine.model_runner import ModelRunner
from loopstack.llm.engine.output import append_tokens, make_detokenizer, request_output
from loopstack.llm.engine.params import RequestOutput, SamplingParams
from loopstack.llm.engine.sampler import make_generator, sample, top_logprobs
from loopstack.llm.engine.scheduler import ScheduledBatch, Scheduler
from loopstack.llm.engine.sequence import Sequence, SequenceStatus
from loopstack.llm.engine.speculative import NgramDrafter, SelfSpecDrafter, verify_batch
from loopstack.llm.models.attention import KVCache

HISTORY = 2048  # recent TTFT/TPOT samples kept for metrics()


def _percentile(values: Any, q: float) -> float:
    vals = sorted(values)
    if not vals:
        return 0.0
    return float(vals[min(len(vals) - 1, int(q * len(vals)))])


def _allocate_kv(mcfg: Any, num_blocks: int, config: EngineConfig) -> KVCache:
    """The KV cache tensors; a size the machine cannot hold is a ValueError naming the knobs, not a MemoryError."""
    dtype = getattr(torch, config.kv_cache_dtype)
    try:
        return KVCache.allocate(mcfg, num_blocks, config.block_size, dtype)
    except (MemoryError, RuntimeError) as exc:
        size = 2 * mcfg.num_layers * num_blocks * config.block_size * mcfg.kv_size * dtype.itemsize
        raise ValueError(f"cannot allocate a KV cache of {num_blocks} blocks of {config.block_size} tokens "
                         f"({size / 2 ** 20:.0f} MB): lower kv_cache_mb or num_kv_blocks") from exc


class LLMEngine:
    """Continuous-batching engine over a paged KV cache (prefix caching, chunked prefill, speculative decoding)."""

    def __init__(self, model: Any, tokenizer: Any = None, config: EngineConfig | None = None) -> None:
        config = dataclasses.replace(config) if config is not None else EngineConfig()
        mcfg = model.config
        if config.max_model_len is not None and config.max_model_len > mcfg.max_position:
            raise ValueError(f"max_model_len={config.max_model_len} is longer than the model's context "
                             f"({mcfg.max_position} tokens); lower it or leave it unset")
        self.max_model_len = config.max_model_len or mcfg.max_position
        config.max_model_len = self.max_model_len
        self.config = config
        self.model = model.eval()
        if hasattr(model, "pack_weights") and not model.__dict__.get("_packs"):
            model.pack_weights()  # MKL pre-packed projections: faster batched decode, same results
        self.tokenizer = tokenizer
        num_blocks = config.resolve_num_blocks(mcfg)
        self.kv = _allocate_kv(mcfg, num_blocks, config)   # first: an impossible size fails here, at once
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.runner = ModelRunner(model, self.kv, self.block_manager)
        spec = config.speculative_method
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, config.enable_chunked_prefill,
            config.max_waiting, config.num_speculative_tokens if spec else 0, self.max_model_len)
        self.drafter: NgramDrafter | SelfSpecDrafter | None = None
        if spec == "ngram":
            self.drafter = NgramDrafter(config.prompt_lookup_min, config.prompt_lookup_max)
        elif spec == "self":
            skip = config.spec_skip_layers
            if skip is None:
                skip = SelfSpecDrafter.default_skip_layers(mcfg.num_layers)
            if not skip or any(not 0 <= i < mcfg.num_layers for i in skip) or len(set(skip)) >= mcfg.num_layers:
                raise ValueError(f"spec_skip_layers {skip} must name some (not all) of layers 0..{mcfg.num_layers - 1}")
            self.drafter = SelfSpecDrafter(skip)
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        self.eos_token_id = eos if eos is not None else mcfg.eos_token_id
        self._seqs: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self.ttft_history: deque[float] = deque(maxlen=HISTORY)
        self.tpot_history: deque[float] = deque(maxlen=HISTORY)
        self.num_steps = 0
        self.num_prompt_tokens = 0
        self.num_generated_tokens = 0
        self.num_finished = 0
        self.spec_proposed = 0
        self.spec_accepted = 0
        self.last_batch_size = 0

    # ---- requests -------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    priority: int = 0) -> None:
        """Queue a request; ValueError for bad input, QueueFullError when the waiting queue is at its limit."""
        params = params if params is not None else SamplingParams()
        params.validate()
        if request_id in self._seqs:
            raise ValueError(f"request id {request_id!r} is already in flight; use a unique id")
        text = None
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass the prompt as a list of token ids")
            text = prompt
            ids = self.tokenizer.encode(prompt, add_bos=bool(getattr(self.tokenizer, "add_bos_token", False)))
        else:
            ids = list(prompt)
            if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in ids):
                raise ValueError("a prompt is a string or a list of integer token ids; got other values in the list")
            ids = [int(t) for t in ids]
        self._check_prompt(ids, params)
        seq = Sequence(next(self._ids), request_id, ids, params, priority, arrival=0, prompt=text)
        seq.arrival = seq.seq_id
        seq.detokenizer = make_detokenizer(self.tokenizer)
        seq.generator = make_generator(params.seed)
        self.scheduler.add(seq)  # may raise QueueFullError before we register anything
        self._seqs[request_id] = seq

    def _check_prompt(self, ids: list[int], params: SamplingParams) -> None:
        vocab = self.model.config.vocab_size
        if not ids:
            raise ValueError("the prompt is empty: send at least one token")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab}); got one outside")
        total = len(ids) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: {total} tokens exceed the "
                f"context length of {self.max_model_len}; shorten the prompt or lower max_tokens")
        bm = self.block_manager
        if bm.blocks_needed(total) > bm.num_blocks:
            raise ValueError(
                f"{total} tokens need {bm.blocks_needed(total)} KV blocks but the cache has {bm.num_blocks}; "
                "raise kv_cache_mb / num_kv_blocks or lower max_tokens")
        if not self.config.enable_chunked_prefill and len(ids) > self.config.max_num_batched_tokens:
            raise ValueError(
                f"the prompt has {len(ids)} tokens but max_num_batched_tokens is "
                f"{self.config.max_num_batched_tokens} and chunked prefill is off; enable it or raise the budget")

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its KV blocks (unknown or finished ids are ignored)."""
        seq = self._seqs.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            seq.finish_time = time.perf_counter()
            self.scheduler.finish(seq, SequenceStatus.FINISHED_ABORTED)

    def has_unfinished(self) -> bool:
        """Any request waiting or running."""
        return self.scheduler.has_unfinished()

    def get_sequence(self, request_id: str) -> Sequence | None:
        """The in-flight sequence for a request id (None once finished)."""
        return self._seqs.get(request_id)

    # ---- stepping -------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One iteration: schedule, draft (if speculating), run the model once, sample/verify, update outputs."""
        batch = self.scheduler.schedule()
        self.last_batch_size = len(batch)
        if not batch.seqs:
            return []
        self.num_steps += 1
        try:
            with torch.inference_mode():
                return self._run(batch)
        except BaseException:
            self.scheduler.recover(batch)  # nothing half-computed stays cached; the sequences recompute later
            raise

    def _run(self, batch: ScheduledBatch) -> list[RequestOutput]:
        seqs = batch.seqs
        drafts, qs = self._draft(batch)
        starts, tokens, num_logits = [], [], []
        for i, seq in enumerate(seqs):
            start = seq.num_computed_tokens
            starts.append(start)
            if seq.is_prefilling:
                n = batch.num_new_tokens[i]
                tokens.append(seq.token_ids[start:start + n])
                num_logits.append(1 if start + n == seq.num_tokens else 0)
            else:
                tokens.append([seq.token_ids[-1], *drafts[i]])
                num_logits.append(1 + len(drafts[i]))
        logits = self.runner.forward(seqs, starts, tokens, num_logits)
        emitted, rows = self._pick_tokens(seqs, logits, num_logits, drafts, qs)
        logprobs = self._logprobs(seqs, logits, emitted, rows)
        outputs = []
        now = time.perf_counter()
        for i, seq in enumerate(seqs):
            if seq.is_prefilling:
                self.num_prompt_tokens += len(tokens[i])
            if not num_logits[i]:
                seq.num_computed_tokens += len(tokens[i])  # a prompt chunk: nothing to sample yet
                self.block_manager.commit(seq.seq_id, seq.token_ids, seq.num_computed_tokens)
                continue
            toks = emitted[i]
            if seq.is_prefilling:
                seq.num_computed_tokens += len(tokens[i])
            else:
                seq.num_computed_tokens += len(toks)  # the last token plus the accepted drafts
                if drafts[i]:
                    self.spec_proposed += len(drafts[i])
                    self.spec_accepted += len(toks) - 1
            before = seq.num_output_tokens
            status = append_tokens(seq, toks, logprobs.get(i), self.eos_token_id, self.max_model_len)
            self.num_generated_tokens += seq.num_output_tokens - before
            self.block_manager.commit(seq.seq_id, seq.token_ids, min(seq.num_computed_tokens, seq.num_tokens))
            if status is not None:
                self._finish(seq, status, now)
            outputs.append(request_output(seq))
        return outputs

    def _finish(self, seq: Sequence, status: SequenceStatus, now: float) -> None:
        seq.finish_time = now
        self.scheduler.finish(seq, status)
        self._seqs.pop(seq.request_id, None)
        self.num_finished += 1
        if seq.first_token_time is not None:
            self.ttft_history.append(seq.first_token_time - seq.arrival_time)
            if seq.num_output_tokens > 1:
                self.tpot_history.append((now - seq.first_token_time) / (seq.num_output_tokens - 1))

    def _draft(self, batch: ScheduledBatch) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        n = len(batch.seqs)
        drafts: list[list[int]] = [[] for _ in range(n)]
        qs: list[torch.Tensor | None] = [None] * n
        spec = [i for i, k in enumerate(batch.num_lookahead) if k > 0]
        if not spec or self.drafter is None:
            return drafts, qs
        if isinstance(self.drafter, NgramDrafter):
            for i in spec:
                drafts[i] = self.drafter.propose(batch.seqs[i].token_ids, batch.num_lookahead[i])
            return drafts, qs
        ds, dq = self.drafter.propose(self.runner, [batch.seqs[i] for i in spec],
                                      [batch.num_lookahead[i] for i in spec])
        for j, i in enumerate(spec):
            drafts[i], qs[i] = ds[j], dq[j]
        return drafts, qs

    def _pick_tokens(self, seqs: list[Sequence], logits: torch.Tensor, num_logits: list[int],
                     drafts: list[list[int]], qs: list[torch.Tensor | None]) -> tuple[list[list[int]], list[int]]:
        """Emitted tokens per sequence and the first logits row of each sequence (plain rows sampled in one call)."""
        first_row, row = [], 0
        for n in num_logits:
            first_row.append(row)
            row += n
        emitted: list[list[int]] = [[] for _ in seqs]
        plain = [i for i, n in enumerate(num_logits) if n == 1]
        if plain:
            if len(plain) == logits.shape[0]:
                sub = logits
            else:
                sub = logits.index_select(0, torch.tensor([first_row[i] for i in plain]))
            toks = sample(sub, [seqs[i].params for i in plain], [seqs[i].generator for i in plain]).tolist()
            for i, t in zip(plain, toks):
                emitted[i] = [t]
        spec = [i for i, n in enumerate(num_logits) if n > 1]
        if spec:
            verified = verify_batch(logits, [(first_row[i], num_logits[i]) for i in spec],
                                    [seqs[i].params for i in spec], [drafts[i] for i in spec],
                                    [qs[i] for i in spec], [seqs[i].generator for i in spec])
            for i, toks in zip(spec, verified):
                emitted[i] = toks
        return emitted, first_row

    def _logprobs(self, seqs: list[Sequence], logits: torch.Tensor, emitted: list[list[int]],
                  first_row: list[int]) -> dict[int, list[dict[int, float]]]:
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None and emitted[i]]
        if not want:
            return {}
        rows, toks, nums = [], [], []
        for i in want:
            for j, t in enumerate(emitted[i]):  # emitted token j was chosen from logits row first_row + j
                rows.append(first_row[i] + j)
                toks.append(t)
                nums.append(seqs[i].params.logprobs)
        lps = top_logprobs(logits.index_select(0, torch.tensor(rows)), torch.tensor(toks), nums)
        out, k = {}, 0
        for i in want:
            out[i] = lps[k:k + len(emitted[i])]
            k += len(emitted[i])
        return out

    # ---- metrics --------------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Queue length, batch size, KV usage, prefix hit rate, preemptions, spec acceptance, TTFT/TPOT stats."""
        bm = self.block_manager
        waiting = self.scheduler.num_waiting
        return {
            "num_waiting": waiting,
            "num_running": self.scheduler.num_running,
            "num_preempted": sum(1 for s in self._seqs.values()
                                 if s.status is SequenceStatus.WAITING and s.num_preemptions),
            "last_batch_size": self.last_batch_size,
            "kv_blocks_used": bm.num_used_blocks,
            "kv_blocks_free": bm.num_free_blocks,
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_cached": bm.num_cached_blocks,
            "prefix_cache_queries": bm.prefix_queries,
            "prefix_cache_hits": bm.prefix_hits,
            "prefix_cache_hit_rate": bm.prefix_hit_rate,
            "preemptions": self.scheduler.num_preemptions,
            "spec_proposed_tokens": self.spec_proposed,
            "spec_accepted_tokens": self.spec_accepted,
            "spec_acceptance_rate": self.spec_accepted / self.spec_proposed if self.spec_proposed else 0.0,
            "steps": self.num_steps,
            "prefill_tokens": self.num_prompt_tokens,
            "generated_tokens": self.num_generated_tokens,
            "finished_requests": self.num_finished,
            "ttft_p50": _percentile(self.ttft_history, 0.5),
            "ttft_p99": _percentile(self.ttft_history, 0.99),
            "tpot_p50": _percentile(self.tpot_history, 0.5),
            "tpot_p99": _percentile(self.tpot_history, 0.99),
            "ttft_history": list(self.ttft_history),
            "tpot_history": list(self.tpot_history),
        }
