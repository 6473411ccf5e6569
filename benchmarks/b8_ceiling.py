"""B8 physical limit: this CPU's float32 matmul throughput at SmolLM2-135M's shapes, and the fastest
the B8 workload could possibly run if every FLOP ran at that speed (no Python, no memory stalls).

Per token and layer the model multiplies by W_qkv [576 -> 960], W_o [576 -> 576], W_gate_up
[576 -> 3072] and W_down [1536 -> 576]; 30 layers; the LM head [576 -> 49,152] runs for sampled tokens
only. Attention adds 4 * 576 * context FLOPs per token and layer. Each shape is timed with torch at M
rows (M tokens in one step); the ceiling uses M = 512 for prefill (a chunk) and M = 64 for decode (the
whole batch in one step). Prints one JSON line.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b8_common import emit, threads, workload  # noqa: E402

HIDDEN, INTER, LAYERS, VOCAB, KV = 576, 1536, 30, 49152, 192
LAYER_SHAPES = {"qkv": (HIDDEN, HIDDEN + 2 * KV), "o": (HIDDEN, HIDDEN), "gate_up": (HIDDEN, 2 * INTER),
                "down": (INTER, HIDDEN)}
HEAD = (HIDDEN, VOCAB)


def time_linear(m: int, k: int, n: int, min_s: float = 0.3) -> float:
    """Seconds of one float32 x[m,k] @ w[n,k]^T (median of repeats for at least min_s)."""
    import torch
    x, w = torch.randn(m, k), torch.randn(n, k)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    times = []
    end = time.perf_counter() + min_s
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def per_token(m: int, head: bool) -> tuple[float, float]:
    """(seconds, FLOPs) per token of the model's matmuls at m rows per step."""
    secs = sum(time_linear(m, k, n) for k, n in LAYER_SHAPES.values()) * LAYERS
    flops = sum(2 * k * n for k, n in LAYER_SHAPES.values()) * LAYERS
    if head:
        secs += time_linear(m, *HEAD)
        flops += 2 * HEAD[0] * HEAD[1]
    return secs / m, flops


def main() -> None:
    import torch
    torch.set_num_threads(threads())
    sweep = {}
    for m in (1, 8, 32, 64, 128, 512):
        s, f = per_token(m, head=True)
        sweep[m] = {"s_per_token": s, "gflops": f / s / 1e9, "tok_per_s": 1 / s}
    prefill_s, prefill_f = per_token(512, head=False)
    decode_s, decode_f = per_token(64, head=True)
    reqs = workload()
    prompt_tokens = sum(len(p) for p, _ in reqs)
    output_tokens = sum(n for _, n in reqs)
    # attention: every token attends to its context (prompt tokens to the prompt so far, outputs to all)
    attn_flops = 0
    for p, n in reqs:
        ctx_sum = len(p) * (len(p) + 1) / 2 + sum(len(p) + i for i in range(1, n + 1))
        attn_flops += 4 * HIDDEN * LAYERS * ctx_sum
    peak_gflops = max(v["gflops"] for v in sweep.values())
    best_s = prompt_tokens * prefill_s + output_tokens * decode_s + attn_flops / (decode_f / decode_s)
    emit({"system": "ceiling", "sweep": sweep, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
          "prefill_s_per_token": prefill_s, "decode_s_per_token_b64": decode_s,
          "prefill_gflops": prefill_f / prefill_s / 1e9, "decode_gflops_b64": decode_f / decode_s / 1e9,
          "attention_gflop": attn_flops / 1e9, "peak_gflops": peak_gflops, "ceiling_s": best_s,
          "ceiling_tok_per_s": output_tokens / best_s, "threads": threads()})


if __name__ == "__main__":
    main()
