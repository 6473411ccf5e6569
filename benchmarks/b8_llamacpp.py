"""B8 worker, llama.cpp side (runs in .bench/llamacpp): llama-cpp-python on the same GGUF file (its
native Q4_1 weights), one stream: the requests one after another in arrival order (all arrive at t=0),
greedy (top_k=1), EOS ignored (exactly n tokens are taken from `generate`).

llama.cpp's AMX weight repacking ("extra buffer types") crashes on this VM (SIGSEGV in
ggml_backend_amx_mul_mat: the CPU reports AMX, the hypervisor does not let it run), so the model is
loaded with `use_extra_bufts = False`: llama.cpp's own AVX-512 Q4_1 kernels, no repacking.

Prints one JSON line (b8_common.summarize).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b8_common import emit, gguf_path, summarize, threads, workload  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=64)
    a = p.parse_args()
    import llama_cpp
    import llama_cpp.llama_cpp as lib
    default_params = lib.llama_model_default_params

    def without_extra_buffers():   # see the module docstring
        params = default_params()
        params.use_extra_bufts = False
        return params
    lib.llama_model_default_params = without_extra_buffers
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf_path()), n_ctx=1024, n_threads=threads(), n_batch=512,
                          verbose=False)
    load_s = time.perf_counter() - t
    reqs = workload()[:a.requests]

    def run(prompt: list[int], n: int) -> list[float]:
        times = []
        llm.reset()
        for _tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == n:
                break
        return times

    run(reqs[0][0][:16], 4)   # warm-up
    records = []
    t0 = time.perf_counter()
    for prompt, n in reqs:
        began = time.perf_counter()
        times = run(prompt, n)
        records.append({"tokens": n, "ttft_s": times[0] - t0, "finish_s": times[-1] - t0,
                        "service_ttft_s": times[0] - began})
    wall = time.perf_counter() - t0
    emit(summarize(records, wall, system="llama.cpp", mode="single", batch=1, load_s=load_s, threads=threads(),
                   version=llama_cpp.__version__))


if __name__ == "__main__":
    main()
