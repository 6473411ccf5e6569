"""B8 worker, loopstack side: `LLMEngine` (paged KV cache, continuous batching, chunked prefill) on the
same GGUF (dequantized to float32 once, cached), greedy, EOS ignored. All requests are queued at t=0
and the engine steps until every one is done.

Prints one JSON line (b8_common.summarize plus the engine's counters).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b8_common import emit, gguf_path, summarize, threads, workload  # noqa: E402


def load(cache_dir: str | None = None):
    """(model, tokenizer) of the SmolLM2 GGUF, with torch set to this benchmark's thread count."""
    import torch

    from loopstack.llm.models.weights import load_model
    torch.set_num_threads(threads())
    return load_model(gguf_path(), cache_dir=cache_dir)


def run_engine(engine, reqs: list[tuple[list[int], int]], params_for=None,  # noqa: ANN001
               tokens: dict | None = None) -> tuple[list[dict], float]:
    """Queue `reqs` at t=0, step until done; per-request timing records and the wall time (and, into `tokens`,
    each request's generated ids)."""
    from loopstack.llm.engine import SamplingParams
    t0 = time.perf_counter()
    for i, (prompt, n) in enumerate(reqs):
        params = params_for(i, n) if params_for else SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        engine.add_request(f"r{i}", prompt, params)
    first: dict[str, float] = {}
    done: dict[str, tuple[float, int]] = {}
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter() - t0
        for out in outs:
            rid = out.request_id
            if rid not in first and out.outputs[0].token_ids:
                first[rid] = now
            if out.finished:
                done[rid] = (now, len(out.outputs[0].token_ids))
                if tokens is not None:
                    tokens[rid] = list(out.outputs[0].token_ids)
    wall = time.perf_counter() - t0
    records = [{"tokens": done[f"r{i}"][1], "ttft_s": first[f"r{i}"], "finish_s": done[f"r{i}"][0]}
               for i in range(len(reqs))]
    return records, wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--kv-cache-mb", type=float, default=2048)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--kv-cache-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--save-tokens", default=None, help="write {request id: generated ids} to this JSON file")
    a = p.parse_args()
    from loopstack.llm.config import EngineConfig
    from loopstack.llm.engine import LLMEngine
    t = time.perf_counter()
    model, tok = load(a.cache_dir)
    load_s = time.perf_counter() - t
    cfg = EngineConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                       kv_cache_mb=a.kv_cache_mb, enable_prefix_caching=True, enable_chunked_prefill=True,
                       kv_cache_dtype=a.kv_cache_dtype)
    reqs = workload()[:a.requests]
    run_engine(LLMEngine(model, tok, cfg), [(reqs[0][0][:16], 4)])   # warm-up on its own engine
    engine = LLMEngine(model, tok, cfg)
    tokens: dict[str, list[int]] = {}
    records, wall = run_engine(engine, reqs, tokens=tokens)
    if a.save_tokens:
        import json
        Path(a.save_tokens).write_text(json.dumps(tokens))
    import loopstack
    m = engine.metrics()
    emit(summarize(records, wall, system="loopstack", mode="continuous", batch=a.max_num_seqs, load_s=load_s,
                   threads=threads(), version=loopstack.__version__, max_num_batched_tokens=a.max_num_batched_tokens,
                   steps=engine.num_steps, preemptions=m.get("preemptions"), kv_cache_dtype=a.kv_cache_dtype))


if __name__ == "__main__":
    main()
