"""B8 worker, transformers side (runs in .bench/hf): `LlamaForCausalLM` loaded from the same GGUF
(float32), greedy, EOS ignored (min_new_tokens = max_new_tokens).

--mode single: one request at a time, in arrival order (all 64 arrive at t=0).
--mode static --batch B: static padded batches of B requests in arrival order (left padding); a batch
runs until its longest output is done, so the shorter ones wait; the next batch starts after it.

Prints one JSON line (b8_common.summarize plus mode and batch size).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b8_common import emit, gguf_path, summarize, threads, workload  # noqa: E402


class StepClock:
    """A generate() streamer that only timestamps each decoding step (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:  # noqa: ANN001 - a token tensor
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["single", "static"], required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--requests", type=int, default=64)
    a = p.parse_args()
    import torch
    from transformers import LlamaForCausalLM
    torch.set_num_threads(threads())
    path = gguf_path()
    t = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t
    reqs = workload()[:a.requests]
    pad = model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id
    # warm-up (not timed): one short generate
    with torch.inference_mode():
        model.generate(torch.tensor([reqs[0][0][:16]]), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                       pad_token_id=pad)
    records = []
    batch = 1 if a.mode == "single" else a.batch
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(reqs), batch):
            group = reqs[start:start + batch]
            longest = max(len(ids) for ids, _ in group)
            ids = torch.full((len(group), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(group), longest), dtype=torch.long)
            for i, (prompt, _) in enumerate(group):
                ids[i, longest - len(prompt):] = torch.tensor(prompt)
                mask[i, longest - len(prompt):] = 1
            n_out = max(n for _, n in group)
            clock = StepClock()
            began = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=n_out, min_new_tokens=n_out,
                           do_sample=False, pad_token_id=pad, streamer=clock)
            assert len(clock.times) == n_out, (len(clock.times), n_out)
            for _, n in group:   # request i is done when its n-th token came out of the batch
                records.append({"tokens": n, "ttft_s": clock.times[0] - t0, "finish_s": clock.times[n - 1] - t0,
                                "service_ttft_s": clock.times[0] - began})
    wall = time.perf_counter() - t0
    emit(summarize(records, wall, system="transformers", mode=a.mode, batch=batch, load_s=load_s,
                   threads=threads(), version=__import__("transformers").__version__,
                   torch=torch.__version__))


if __name__ == "__main__":
    main()
