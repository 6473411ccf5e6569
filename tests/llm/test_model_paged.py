"""The paged forward (KV cache through block tables) must reproduce the dense reference forward exactly."""

from __future__ import annotations

import pytest
import torch

from loopstack.llm.config import EngineConfig, LlamaConfig
from loopstack.llm.models.attention import AttnMetadata, KVCache
from tests.llm.conftest import PagedRunner, build_tiny_model

ATOL = 1e-4


@pytest.fixture(autouse=True, params=["kernel", "torch"])
def attention_path(request, monkeypatch):
    """Every test runs on the native paged-attention kernel and on the pure-torch gather + SDPA path."""
    from loopstack.llm import kernels

    monkeypatch.setenv(kernels.ENV_SWITCH, "1" if request.param == "kernel" else "0")
    kernels.reset()
    if request.param == "kernel":
        assert kernels.library() is not None, "the paged-attention kernel did not build (is a C compiler installed?)"
    yield request.param
    kernels.reset()


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (n,), generator=g).tolist()


def _dense(model, toks: list[int], skip: frozenset[int] = frozenset()) -> torch.Tensor:
    return model.forward_dense(torch.tensor([toks]), skip_layers=skip)[0]


def test_one_shot_prefill_matches_dense(tiny_model):
    toks = _tokens(37, 1)
    (out,) = PagedRunner(tiny_model).step([("a", toks)])
    torch.testing.assert_close(out, _dense(tiny_model, toks), atol=ATOL, rtol=0)


def test_short_prefill_takes_batched_path_and_matches(tiny_model):
    toks = _tokens(5, 2)  # below BATCHED_MAX_QUERY_LEN: grouped path with a causal mask
    (out,) = PagedRunner(tiny_model).step([("a", toks)])
    torch.testing.assert_close(out, _dense(tiny_model, toks), atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunks", [[20, 20, 13], [3, 30, 1, 19], [17, 36]])
def test_chunked_prefill_matches_dense(tiny_model, chunks):
    toks = _tokens(sum(chunks), 3)
    runner = PagedRunner(tiny_model, shuffle_seed=4)
    outs, pos = [], 0
    for n in chunks:
        outs += runner.step([("a", toks[pos:pos + n])])
        pos += n
    torch.testing.assert_close(torch.cat(outs), _dense(tiny_model, toks), atol=ATOL, rtol=0)


def test_decode_steps_match_dense(tiny_model):
    toks = _tokens(30, 5)
    runner = PagedRunner(tiny_model)
    outs = runner.step([("a", toks[:22])])
    for t in toks[22:]:
        outs += runner.step([("a", [t])])
    torch.testing.assert_close(torch.cat(outs), _dense(tiny_model, toks), atol=ATOL, rtol=0)


def test_mixed_batch_of_different_lengths_matches_dense(tiny_model):
    """Prefill chunks, a verify-sized chunk and decodes of sequences with different lengths in one step."""
    seqs = {s: _tokens(n, 10 + i) for i, (s, n) in enumerate({"a": 45, "b": 9, "c": 26, "d": 31, "e": 18}.items())}
    runner = PagedRunner(tiny_model, num_blocks=128, shuffle_seed=7)
    got: dict[str, list[torch.Tensor]] = {s: [] for s in seqs}
    plan = [
        [("a", 0, 20), ("b", 0, 8), ("c", 0, 25)],
        [("a", 20, 40), ("b", 8, 9), ("c", 25, 26), ("d", 0, 30)],
        [("a", 40, 41), ("d", 30, 31), ("e", 0, 3)],  # decodes + a short (grouped) prefill
        [("a", 41, 45), ("e", 3, 18)],  # verify-like 4-token chunk + a 15-token chunk
    ]
    for step in plan:
        outs = runner.step([(s, seqs[s][a:b]) for s, a, b in step])
        for (s, _, _), o in zip(step, outs):
            got[s].append(o)
    for s, toks in seqs.items():
        torch.testing.assert_close(torch.cat(got[s]), _dense(tiny_model, toks), atol=ATOL, rtol=0, msg=s)


def test_batched_decode_with_shuffled_block_tables(tiny_model):
    lens = [3, 17, 8, 33, 1, 12]
    seqs = [_tokens(n + 6, 20 + i) for i, n in enumerate(lens)]
    runner = PagedRunner(tiny_model, num_blocks=128, shuffle_seed=11)
    finals = runner.step([(str(i), s[:n]) for i, (s, n) in enumerate(zip(seqs, lens))], last_only=True)
    assert all(f.shape == (1, 128) for f in finals)
    for k in range(6):
        outs = runner.step([(str(i), [s[n + k]]) for i, (s, n) in enumerate(zip(seqs, lens))])
        for i, (s, n) in enumerate(zip(seqs, lens)):
            want = _dense(tiny_model, s[: n + k + 1])[-1]
            torch.testing.assert_close(outs[i][0], want, atol=ATOL, rtol=0)
    tables = list(runner.tables.values())
    assert any(t != sorted(t) for t in tables), "block tables should be non-contiguous for this test"


def test_decode_batch_split_by_length_matches_dense(tiny_model, monkeypatch, attention_path):
    """Long and short sequences decode in separate length buckets (less padding) with identical results."""
    from loopstack.llm.models import attention

    plans = []
    real_build = attention._build_plan
    monkeypatch.setattr(attention, "_build_plan", lambda m, *a: plans.append(real_build(m, *a)) or plans[-1])
    lens = [60, 5, 55, 6, 50, 7, 48, 8, 9, 3]
    seqs = [_tokens(n + 2, 60 + i) for i, n in enumerate(lens)]
    runner = PagedRunner(tiny_model, num_blocks=128, shuffle_seed=5)
    runner.step([(str(i), s[:n]) for i, (s, n) in enumerate(zip(seqs, lens))], last_only=True)
    for k in range(2):
        outs = runner.step([(str(i), [s[n + k]]) for i, (s, n) in enumerate(zip(seqs, lens))])
        for i, (s, n) in enumerate(zip(seqs, lens)):
            torch.testing.assert_close(outs[i][0], _dense(tiny_model, s[: n + k + 1])[-1], atol=ATOL, rtol=0)
    if attention_path == "kernel":  # every short query goes to the kernel, no gather groups
        assert not plans[-1].groups and plans[-1].kernel.q_lens.numel() == len(lens)
    else:
        assert len(plans[-1].groups) == 2 and sorted(g.num_seqs for g in plans[-1].groups) == [4, 6]


def test_logits_indices_select_rows(tiny_model):
    toks = _tokens(12, 30)
    runner = PagedRunner(tiny_model)
    (last,) = runner.step([("a", toks)], last_only=True)
    torch.testing.assert_close(last[0], _dense(tiny_model, toks)[-1], atol=ATOL, rtol=0)


def test_skip_layers_match_dense_and_do_not_write_kv(tiny_model):
    model = build_tiny_model(num_layers=4)
    toks = _tokens(20, 40)
    skip = frozenset({1, 2})
    runner = PagedRunner(model)
    outs = runner.step([("a", toks[:16])], skip_layers=skip)
    outs += runner.step([("a", toks[16:17])], skip_layers=skip)
    outs += runner.step([("a", toks[17:])], skip_layers=skip)
    want = _dense(model, toks, skip)
    torch.testing.assert_close(torch.cat(outs), want, atol=ATOL, rtol=0)
    assert not torch.allclose(want, _dense(model, toks), atol=1e-3)
    assert runner.kv.k[1].abs().sum() == 0 and runner.kv.k[2].abs().sum() == 0
    assert runner.kv.k[0].abs().sum() > 0 and runner.kv.v[3].abs().sum() > 0


def test_gqa_and_mha_shapes(tiny_model):
    for kvh in (1, 4):
        model = build_tiny_model(num_kv_heads=kvh)
        toks = _tokens(19, 50)
        runner = PagedRunner(model)
        outs = runner.step([("a", toks[:18])]) + runner.step([("a", toks[18:])])
        torch.testing.assert_close(torch.cat(outs), _dense(model, toks), atol=ATOL, rtol=0)


def test_bad_metadata_is_rejected_with_a_clear_message(tiny_model):
    kv = KVCache.allocate(tiny_model.config, 8, 4)
    meta = AttnMetadata([3], [2], torch.zeros(1, 2, dtype=torch.long), torch.arange(3), 4)
    with pytest.raises(ValueError, match="query_len <= context_len"):
        tiny_model(torch.arange(3), torch.arange(3), meta, kv)
    meta = AttnMetadata([3], [3], torch.zeros(1, 2, dtype=torch.long), torch.arange(2), 4)
    with pytest.raises(ValueError, match="slot_mapping"):
        tiny_model(torch.arange(3), torch.arange(3), meta, kv)


def test_positions_beyond_max_position_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="max_position"):
        tiny_model.forward_dense(torch.zeros(1, tiny_model.config.max_position + 1, dtype=torch.long))


def test_config_validation_and_kv_budget():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LlamaConfig.tiny(num_heads=4, num_kv_heads=3)
    cfg = LlamaConfig.tiny()
    per_block = 2 * cfg.num_layers * 16 * cfg.num_kv_heads * cfg.head_dim * 4
    assert EngineConfig(kv_cache_mb=1).resolve_num_blocks(cfg) == (1024 * 1024) // per_block
    assert EngineConfig(num_kv_blocks=7).resolve_num_blocks(cfg) == 7
    assert EngineConfig().cache_dir.is_absolute()
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=0)


@pytest.mark.parametrize("qlen", [1, 3])
def test_gather_chunks_match_dense(tiny_model, monkeypatch, qlen, attention_path):
    """A group gathered in several byte-limited chunks (longest first) gives the dense results for
    decode (1 query) and verification-sized queries (GQA heads folded into query rows)."""
    from loopstack.llm.models import attention

    block_bytes = 4 * tiny_model.config.num_kv_heads * tiny_model.config.head_dim * 4
    monkeypatch.setattr(attention, "GATHER_CHUNK_BYTES", 12 * block_bytes)
    plans = []
    real_build = attention._build_plan
    monkeypatch.setattr(attention, "_build_plan", lambda m, *a: plans.append(real_build(m, *a)) or plans[-1])
    lens = [9, 14, 5, 11, 16, 7, 13]
    seqs = [_tokens(n + qlen, 80 + i) for i, n in enumerate(lens)]
    runner = PagedRunner(tiny_model, num_blocks=128, shuffle_seed=6)
    runner.step([(str(i), s[:n]) for i, (s, n) in enumerate(zip(seqs, lens))], last_only=True)
    outs = runner.step([(str(i), s[n:n + qlen]) for i, (s, n) in enumerate(zip(seqs, lens))])
    for i, (s, n) in enumerate(zip(seqs, lens)):
        torch.testing.assert_close(outs[i], _dense(tiny_model, s[: n + qlen])[n:], atol=ATOL, rtol=0)
    groups = plans[-1].groups
    if attention_path == "kernel":
        assert not groups and sorted(plans[-1].kernel.ctx_lens.tolist()) == sorted(n + qlen for n in lens)
        return
    assert len(groups) > 1 and sum(g.num_seqs for g in groups) == len(lens)
    assert all(g.block_ids.numel() <= 12 or g.num_seqs == 1 for g in groups)  # each chunk within the byte limit


def test_packed_weights_match_dense_and_notice_in_place_changes():
    """MKL pre-packed projections give the dense results, and a weight changed after packing is not served stale."""
    model = build_tiny_model(seed=3)
    model.pack_weights()
    assert model._packs and (not torch.backends.mkl.is_available()
                             or all(p.packed is not None for p in model._packs.values()))
    toks = _tokens(40, 90)  # 40 rows >= PACKED_MIN_ROWS: the packed path
    (out,) = PagedRunner(model).step([("a", toks)])
    torch.testing.assert_close(out, _dense(model, toks), atol=ATOL, rtol=0)
    with torch.no_grad():
        model.layers[0].gate_up_proj.weight.mul_(1.5)
    (out2,) = PagedRunner(model).step([("a", toks)])
    torch.testing.assert_close(out2, _dense(model, toks), atol=ATOL, rtol=0)
    assert not torch.allclose(out, out2, atol=1e-3)


def test_decode_across_two_threads_matches_dense(tiny_model, attention_path):
    """With 2 torch threads (the kernel shares torch's OpenMP threads) the results stay the dense ones."""
    lens = [40, 3, 33, 17, 5, 29]
    seqs = [_tokens(n + 1, 120 + i) for i, n in enumerate(lens)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner = PagedRunner(tiny_model, num_blocks=128, shuffle_seed=9)
        runner.step([(str(i), s[:n]) for i, (s, n) in enumerate(zip(seqs, lens))], last_only=True)
        outs = runner.step([(str(i), [s[n]]) for i, (s, n) in enumerate(zip(seqs, lens))])
    finally:
        torch.set_num_threads(before)
    for i, (s, n) in enumerate(zip(seqs, lens)):
        torch.testing.assert_close(outs[i][0], _dense(tiny_model, s[: n + 1])[-1], atol=ATOL, rtol=0)


def test_float16_kv_cache_stays_close_to_dense_and_halves_the_block_size(tiny_model, attention_path):
    """A float16 cache (prefill, chunked prefill over cached blocks, batched decode) stays within float16
    rounding of the float32 reference, on the kernel and on the torch path; a block takes half the bytes."""
    lens = [23, 6, 17]
    seqs = [_tokens(n + 3, 150 + i) for i, n in enumerate(lens)]
    runner = PagedRunner(tiny_model, num_blocks=128, shuffle_seed=3, dtype=torch.float16)
    assert runner.kv.k.dtype == torch.float16
    runner.step([(str(i), s[:n - 4]) for i, (s, n) in enumerate(zip(seqs, lens))], last_only=True)
    runner.step([(str(i), s[n - 4:n]) for i, (s, n) in enumerate(zip(seqs, lens))], last_only=True)
    for k in range(3):
        outs = runner.step([(str(i), [s[n + k]]) for i, (s, n) in enumerate(zip(seqs, lens))])
        for i, (s, n) in enumerate(zip(seqs, lens)):
            want = _dense(tiny_model, s[: n + k + 1])[-1]
            err = (outs[i][0] - want).abs().max().item()
            assert err < 5e-3 * max(1.0, want.abs().max().item()), (i, k, err)
    cfg = tiny_model.config
    f32, f16 = EngineConfig(kv_cache_mb=1), EngineConfig(kv_cache_mb=1, kv_cache_dtype="float16")
    assert f16.resolve_num_blocks(cfg) == 2 * f32.resolve_num_blocks(cfg)
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of float32, float16"):
        EngineConfig(kv_cache_dtype="bfloat16")


def test_loading_the_kernel_keeps_subnormal_floats(attention_path):
    """The kernel is compiled with -ffast-math but must not switch the process to flush-to-zero (linking
    crtfastmath.o would): every float op of Python, numpy and torch would silently change."""
    from loopstack.llm import kernels

    kernels.library()
    tiny = float("2.2250738585072014e-308")  # smallest normal double
    assert tiny / 4 > 0.0
    assert (torch.tensor([1e-38], dtype=torch.float32) / 100).item() > 0.0
