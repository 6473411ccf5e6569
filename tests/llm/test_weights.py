"""GGUF loading: llama.cpp names and Q/K permutation map back to our fused layout; the dequantized cache is reused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from loopstack.llm import config
from loopstack.llm.models import weights
from loopstack.llm.models.llama import LlamaForCausalLM
from loopstack.llm.models.tokenizer import bytes_to_unicode
from tests.llm.conftest import build_tiny_model


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to Q/K rows (the inverse of what the loader must undo)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model: LlamaForCausalLM, path: Path) -> Path:
    """Write a tiny model as an F32 GGUF exactly the way llama.cpp lays out a Llama checkpoint."""
    import gguf

    cfg = model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_position)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([bytes_to_unicode()[b] for b in range(cfg.vocab_size)])
    w.add_token_merges([])
    w.add_token_types([1] * cfg.vocab_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_tensor("token_embd.weight", sd["embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["norm"])
    q, kv = cfg.q_size, cfg.kv_size
    for i in range(cfg.num_layers):
        p, o = f"blk.{i}.", f"layers.{i}."
        qkv = sd[o + "qkv_proj.weight"]
        w.add_tensor(p + "attn_q.weight", _llama_cpp_permute(qkv[:q], cfg.num_heads))
        w.add_tensor(p + "attn_k.weight", _llama_cpp_permute(qkv[q:q + kv], cfg.num_kv_heads))
        w.add_tensor(p + "attn_v.weight", np.ascontiguousarray(qkv[q + kv:]))
        w.add_tensor(p + "attn_output.weight", sd[o + "o_proj.weight"])
        gate, up = np.split(sd[o + "gate_up_proj.weight"], 2)
        w.add_tensor(p + "ffn_gate.weight", np.ascontiguousarray(gate))
        w.add_tensor(p + "ffn_up.weight", np.ascontiguousarray(up))
        w.add_tensor(p + "ffn_down.weight", sd[o + "down_proj.weight"])
        w.add_tensor(p + "attn_norm.weight", sd[o + "input_norm"])
        w.add_tensor(p + "ffn_norm.weight", sd[o + "post_norm"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[LlamaForCausalLM, Path]:
    model = build_tiny_model(seed=3, num_heads=4, num_kv_heads=2)
    return model, write_tiny_gguf(model, tmp_path / "tiny.gguf")


def test_gguf_round_trip_reproduces_the_model(tiny_gguf, tmp_path):
    model, path = tiny_gguf
    loaded, tok = weights.load_model(path, cache_dir=tmp_path / "cache")
    assert loaded.config == replace(model.config, rms_eps=loaded.config.rms_eps)  # GGUF stores eps as float32
    assert loaded.config.rms_eps == pytest.approx(model.config.rms_eps, rel=1e-6)
    ids = torch.tensor([[5, 17, 99, 3, 64, 1, 42, 8, 120, 7]])
    torch.testing.assert_close(loaded.forward_dense(ids), model.forward_dense(ids), atol=1e-5, rtol=0)
    assert tok.vocab_size == 128 and tok.encode("hi!") == [ord("h"), ord("i"), ord("!")]
    for p in loaded.parameters():
        assert p.dtype == torch.float32 and p.is_contiguous()


def test_cache_is_written_once_and_reused(tiny_gguf, tmp_path, monkeypatch):
    _, path = tiny_gguf
    cache = tmp_path / "cache"
    weights.load_model(path, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    key = weights.file_sha256(path)
    assert files == [f"{key}.safetensors", f"{key}.tokenizer.json"]

    def boom(*a, **k):
        raise AssertionError("converted again although the cache was valid")

    monkeypatch.setattr(weights, "convert_gguf", boom)
    weights.load_model(path, cache_dir=cache)
    monkeypatch.undo()
    # A different GGUF gets its own cache entry rather than stale weights.
    other = write_tiny_gguf(build_tiny_model(seed=4), tmp_path / "other.gguf")
    weights.load_model(other, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_default_cache_dir_is_outside_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv(config.CACHE_ENV, raising=False)
    assert config.default_cache_dir() == Path("~/.cache/loopstack/llm").expanduser()
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path))
    assert config.default_cache_dir() == tmp_path


def test_missing_file_and_wrong_architecture_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.load_model(tmp_path / "nope.gguf", cache_dir=tmp_path)
    import gguf

    bad = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(bad), "gpt2")
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="Llama-architecture"):
        weights.load_model(bad, cache_dir=tmp_path / "c")


def test_smollm2_gguf_is_found():
    path = weights.find_smollm2_gguf()
    assert path.is_file() and path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_damaged_or_incomplete_gguf_files_give_clear_errors(tiny_gguf, tmp_path):
    _, good = tiny_gguf
    data = good.read_bytes()
    for name, content in [("empty", b""), ("truncated", data[:len(data) // 2]), ("header", data[:20]),
                          ("text", b"not a model\n" * 100)]:
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}.gguf is not a readable GGUF file"):
            weights.load_model(path, cache_dir=tmp_path / "c")
    import gguf

    for name, keys in [("nokeys", {}), ("notok", {"block_count": 1, "embedding_length": 8, "head_count": 2,
                                                   "feed_forward_length": 16})]:
        path = tmp_path / f"{name}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        for k, v in keys.items():
            getattr(w, "add_" + k)(v)
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        missing = "tokenizer.ggml.tokens" if keys else "llama.attention.head_count"
        with pytest.raises(ValueError, match=f"lacks metadata '{missing}'"):
            weights.load_model(path, cache_dir=tmp_path / "c")


def test_llm_converts_into_the_cache_folder_the_environment_names(tiny_gguf, tmp_path, monkeypatch):
    from loopstack.llm.api import LLM
    monkeypatch.setenv("HOME", str(tmp_path / "home"))   # where the bug wrote: ~/.cache/loopstack/llm
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "env-cache"))
    assert config.EngineConfig().cache_dir == tmp_path / "env-cache"
    _, path = tiny_gguf
    LLM(model=str(path), num_kv_blocks=8, block_size=4)
    assert len(list((tmp_path / "env-cache").glob("*.safetensors"))) == 1
    assert not (tmp_path / "home").exists()


def test_an_unwritable_cache_folder_is_a_clear_error(tiny_gguf, tmp_path):
    _, path = tiny_gguf
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cannot write the converted model to .*a-file/cache.*writable folder"):
        weights.load_model(path, cache_dir=tmp_path / "a-file" / "cache")
