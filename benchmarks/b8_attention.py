"""Decode attention alone: the native paged-attention kernel vs the pure-torch gather + SDPA path.

64 sequences with random context lengths 64-500 (seeded), SmolLM2-135M's attention shape (9 query heads, 3 KV
heads, head_dim 64, 30 layers, block size 16), blocks scattered over the cache. Each repeat times all 30 layers
once per path, alternating the paths; prints the medians and the ratio.

Usage: python benchmarks/b8_attention.py [--threads 1] [--dtype float32|float16] [--repeat 6]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--repeat", type=int, default=6)
    a = p.parse_args()
    from loopstack.llm import kernels
    from loopstack.llm.models import attention as A
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    S, kvh, grp, d, bs, L = 64, 3, 3, 64, 16, 30
    h = kvh * grp
    ctx = torch.randint(64, 500, (S,)).tolist()
    nb_total = sum(-(-c // bs) for c in ctx) + 10
    perm = torch.randperm(nb_total)
    dt = getattr(torch, a.dtype)
    kv = A.KVCache(torch.randn(L, nb_total, bs, kvh, d).to(dt), torch.randn(L, nb_total, bs, kvh, d).to(dt))
    bt = torch.zeros(S, max(-(-c // bs) for c in ctx), dtype=torch.long)
    pos = 0
    for s, c in enumerate(ctx):
        n = -(-c // bs)
        bt[s, :n] = perm[pos:pos + n]
        pos += n
    q = torch.randn(S, h + 2 * kvh, d)[:, :h]  # a view with the qkv row stride, as in the model
    times: dict[str, list[float]] = {"kernel": [], "torch": []}
    outs: dict[str, torch.Tensor] = {}
    for _ in range(a.repeat):
        for mode in times:
            os.environ[kernels.ENV_SWITCH] = "1" if mode == "kernel" else "0"
            kernels.reset()
            meta = A.AttnMetadata([1] * S, ctx, bt.clone(), torch.zeros(S, dtype=torch.long), bs)
            meta.plan(kv.k[0, 0].nbytes, kvh)
            t = time.perf_counter()
            for layer in range(L):
                outs[mode] = A.paged_attention(q, None, None, kv, layer, meta)
            times[mode].append(time.perf_counter() - t)
    med = {m: statistics.median(v) * 1e3 for m, v in times.items()}
    print(f"threads={a.threads} dtype={a.dtype} load={os.getloadavg()[0]:.2f} "
          f"max |kernel - torch| = {(outs['kernel'] - outs['torch']).abs().max().item():.2e}")
    print(f"30 layers, 64 sequences, {sum(ctx):,} keys: kernel {med['kernel']:.1f} ms, torch {med['torch']:.1f} ms, "
          f"torch / kernel = {med['torch'] / med['kernel']:.2f}x")


if __name__ == "__main__":
    main()
