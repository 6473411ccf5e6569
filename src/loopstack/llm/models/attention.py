"""Paged KV cache and paged attention (prefill, chunked prefill, decode, verify) over block tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from loopstack.llm import kernels
from loopstack.llm.config import LlamaConfig

# Sequences whose query length is at most this are batched together: all in one native-kernel call, or (the
# pure-torch path) one gather + one SDPA per group; covers decode (1) and speculative verification (k+1).
# Longer prefill chunks are processed one by one.
BATCHED_MAX_QUERY_LEN = 16
MIN_BUCKET = 4  # fewest sequences worth a separate gather + SDPA when splitting a group by length
# A group's gathered K (and V) is split into chunks of about this many bytes, so each chunk's copy stays in the
# CPU cache while SDPA reads it back (one big gather per layer streams tens of MB through DRAM twice).
GATHER_CHUNK_BYTES = 4 << 20


@dataclass
class KVCache:
    """K and V for every layer, laid out [num_layers, num_blocks, block_size, num_kv_heads, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor
    # Reused gather buffers: a fresh multi-MB tensor per layer costs page faults (~40% of the gather time).
    _scratch: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def gather(self, which: str, layer: int, block_ids: torch.Tensor) -> torch.Tensor:
        """Blocks block_ids of one layer's K or V as float32 [len(block_ids), block_size, kv_heads, head_dim].

        The result lives in a scratch buffer that the next gather of the same kind overwrites (a float16 cache
        is widened into a float32 one).
        """
        src = (self.k if which == "k" else self.v)[layer]
        n = block_ids.numel()
        buf = self._scratch.get(which)
        if buf is None or buf.shape[0] < n:
            buf = torch.empty((max(n, 64),) + tuple(src.shape[1:]), dtype=src.dtype)
            self._scratch[which] = buf
        got = torch.index_select(src, 0, block_ids, out=buf[:n])
        if got.dtype == torch.float32:
            return got
        wide = self._scratch.get(which + "32")
        if wide is None or wide.shape[0] < n:
            wide = torch.empty(buf.shape, dtype=torch.float32)
            self._scratch[which + "32"] = wide
        return wide[:n].copy_(got)

    @classmethod
    def allocate(
        cls, config: LlamaConfig, num_blocks: int, block_size: int, dtype: torch.dtype = torch.float32
    ) -> KVCache:
        """Zero-filled cache with num_blocks blocks of block_size token slots per layer."""
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"KVCache needs positive num_blocks and block_size, got {num_blocks}, {block_size}")
        shape = (config.num_layers, num_blocks, block_size, config.num_kv_heads, config.head_dim)
        return cls(k=torch.zeros(shape, dtype=dtype), v=torch.zeros(shape, dtype=dtype))

    @property
    def num_blocks(self) -> int:
        """Blocks per layer."""
        return self.k.shape[1]

    @property
    def block_size(self) -> int:
        """Token slots per block."""
        return self.k.shape[2]


@dataclass
class _Group:
    """Sequences with the same short query length, attended in one batched SDPA call."""

    rows: torch.Tensor | None  # token rows in T (None = all rows, in order)
    num_seqs: int
    query_len: int
    block_ids: torch.Tensor  # int64 [S * nb], flattened block tables truncated to nb blocks
    num_keys: int  # nb * block_size
    mask: torch.Tensor  # float [S, 1, q, num_keys]: 0 where the query may attend, -inf elsewhere
    row_mask: torch.Tensor | None = None  # mask repeated per GQA head group (query_len > 1), built on first use


@dataclass
class _Single:
    """One long (prefill) query chunk, attended alone."""

    start: int
    end: int
    context_len: int
    block_ids: torch.Tensor | None  # None = fresh prefill: attend over the new K/V directly, causally
    mask: torch.Tensor | None


@dataclass
class _KernelBatch:
    """Short-query sequences attended by the native kernel straight from their block tables (no gather)."""

    block_tables: torch.Tensor  # int64 [S', max_blocks]
    q_starts: torch.Tensor  # int64 [S'] first row of each sequence's queries in T
    q_lens: torch.Tensor
    ctx_lens: torch.Tensor


@dataclass
class _Plan:
    groups: list[_Group]
    singles: list[_Single]
    kernel: _KernelBatch | None = None


@dataclass
class AttnMetadata:
    """Where one forward step's T new tokens (flattened in sequence order) read and write the paged KV cache."""

    query_lens: list[int]
    context_lens: list[int]
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    block_size: int
    _plan: _Plan | None = field(default=None, init=False, repr=False, compare=False)
    _block_bytes: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        """T, the number of new tokens in this step."""
        return sum(self.query_lens)

    def validate(self) -> None:
        """Check shapes and lengths agree; raises ValueError naming the mismatch."""
        s = len(self.query_lens)
        if len(self.context_lens) != s:
            raise ValueError(f"AttnMetadata: {s} query_lens but {len(self.context_lens)} context_lens")
        if self.block_tables.dim() != 2 or self.block_tables.shape[0] != s:
            shape = tuple(self.block_tables.shape)
            raise ValueError(f"AttnMetadata: block_tables must be [S={s}, max_blocks], got {shape}")
        if self.slot_mapping.numel() != self.num_tokens:
            n = self.slot_mapping.numel()
            raise ValueError(f"AttnMetadata: slot_mapping has {n} slots for {self.num_tokens} tokens")
        for q, c in zip(self.query_lens, self.context_lens):
            if q <= 0 or c < q:
                raise ValueError(f"AttnMetadata: need 0 < query_len <= context_len, got query_len={q}, context_len={c}")
            if -(-c // self.block_size) > self.block_tables.shape[1]:
                raise ValueError(f"AttnMetadata: context_len {c} needs more blocks than block_tables has columns")

    def plan(self, block_bytes: int = 0, use_kernel: bool = False) -> _Plan:
        """Per-step attention plan, computed once and shared by every layer.

        block_bytes (one layer's K block in bytes) lets big decode groups be gathered in cache-sized chunks;
        use_kernel hands short queries to the native kernel when it is available.
        """
        if self._plan is None:
            self.validate()
            self.block_tables = self.block_tables.long()
            self.slot_mapping = self.slot_mapping.long()
            self._block_bytes = block_bytes
            self._plan = _build_plan(self, use_kernel and kernels.library() is not None)
        return self._plan


def _build_plan(meta: AttnMetadata, use_kernel: bool = False) -> _Plan:
    bs = meta.block_size
    starts: list[int] = []
    pos = 0
    for q in meta.query_lens:
        starts.append(pos)
        pos += q
    by_qlen: dict[int, list[int]] = {}
    singles: list[_Single] = []
    short: list[int] = []
    for s, (q, c) in enumerate(zip(meta.query_lens, meta.context_lens)):
        if q <= BATCHED_MAX_QUERY_LEN and use_kernel:
            short.append(s)
        elif q <= BATCHED_MAX_QUERY_LEN:
            by_qlen.setdefault(q, []).append(s)
        elif q == c:
            singles.append(_Single(starts[s], starts[s] + q, c, None, None))
        else:
            nb = -(-c // bs)
            keypos = torch.arange(nb * bs)
            qpos = torch.arange(c - q, c)
            mask = _additive((keypos[None, :] <= qpos[:, None])[None, None])  # [1, 1, q, keys]
            singles.append(_Single(starts[s], starts[s] + q, c, meta.block_tables[s, :nb], mask))
    groups: list[_Group] = []
    total = meta.num_tokens
    buckets = [b for q, seqs in by_qlen.items() for b in _length_buckets(seqs, meta.context_lens, bs)]
    if meta._block_bytes:
        buckets = [c for b in buckets for c in _byte_chunks(b, meta.context_lens, bs, meta._block_bytes)]
    for seqs in buckets:
        q = meta.query_lens[seqs[0]]
        nb = -(-max(meta.context_lens[s] for s in seqs) // bs)
        idx = torch.tensor(seqs, dtype=torch.long)
        block_ids = meta.block_tables.index_select(0, idx)[:, :nb].reshape(-1)
        ctx = torch.tensor([meta.context_lens[s] for s in seqs], dtype=torch.long)
        limit = ctx[:, None] - q + torch.arange(q)[None, :]  # [S, q] last key position each query may see
        mask = _additive((torch.arange(nb * bs)[None, None, :] <= limit[:, :, None]).unsqueeze(1))
        if len(seqs) * q == total:
            rows = None
        else:
            rows = torch.cat([torch.arange(starts[s], starts[s] + q) for s in seqs])
        groups.append(_Group(rows, len(seqs), q, block_ids, nb * bs, mask))
    return _Plan(groups, singles, _kernel_batch(meta, short, starts) if short else None)


def _kernel_batch(meta: AttnMetadata, seqs: list[int], starts: list[int]) -> _KernelBatch:
    # longest first, so the kernel's dynamic schedule does not end with one thread on a long sequence
    seqs = sorted(seqs, key=lambda s: -meta.query_lens[s] * meta.context_lens[s])
    idx = torch.tensor(seqs, dtype=torch.long)
    q_lens = torch.tensor([meta.query_lens[s] for s in seqs], dtype=torch.long)
    ctx = torch.tensor([meta.context_lens[s] for s in seqs], dtype=torch.long)
    tables = meta.block_tables.index_select(0, idx)
    return _KernelBatch(tables, torch.tensor([starts[s] for s in seqs], dtype=torch.long), q_lens, ctx)


def _length_buckets(seqs: list[int], context_lens: list[int], block_size: int) -> list[list[int]]:
    """Split a batched group so short sequences are not padded to the longest one's length.

    A new bucket starts when a sequence needs at most half the blocks of its bucket's longest one and both
    sides keep at least MIN_BUCKET sequences; otherwise one bucket in the original order.
    """
    nblocks = {s: -(-context_lens[s] // block_size) for s in seqs}
    order = sorted(seqs, key=lambda s: -nblocks[s])
    out: list[list[int]] = [[order[0]]]
    for i, s in enumerate(order[1:], start=1):
        cur = out[-1]
        if 2 * nblocks[s] <= nblocks[cur[0]] and len(cur) >= MIN_BUCKET and len(order) - i >= MIN_BUCKET:
            out.append([s])
        else:
            cur.append(s)
    return out if len(out) > 1 else [seqs]


def _byte_chunks(seqs: list[int], context_lens: list[int], block_size: int, block_bytes: int) -> list[list[int]]:
    """Split a bucket, longest first, into chunks whose gathered K stays near GATHER_CHUNK_BYTES (each chunk is
    padded only to its own longest sequence)."""
    nblocks = {s: -(-context_lens[s] // block_size) for s in seqs}
    total = sum(nblocks[s] for s in seqs) * block_bytes
    if total <= GATHER_CHUNK_BYTES:
        return [seqs]
    order = sorted(seqs, key=lambda s: -nblocks[s])
    out: list[list[int]] = [[]]
    for s in order:
        cur = out[-1]
        if cur and (len(cur) + 1) * nblocks[cur[0]] * block_bytes > GATHER_CHUNK_BYTES:
            out.append([s])
        else:
            cur.append(s)
    return out


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """Float mask (0 / -inf) built once per step, so SDPA does not convert a bool mask in every layer."""
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))


def write_kv(kv: KVCache, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store the new tokens' K/V ([T, kv_heads, head_dim]) at their flat slots in this layer's cache."""
    _, nblocks, bsize, kvh, d = kv.k.shape
    kv.k[layer].view(nblocks * bsize, kvh, d).index_copy_(0, slot_mapping, k.to(kv.k.dtype))
    kv.v[layer].view(nblocks * bsize, kvh, d).index_copy_(0, slot_mapping, v.to(kv.v.dtype))


def paged_attention(
    q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv: KVCache, layer: int, meta: AttnMetadata
) -> torch.Tensor:
    """Causal attention of q [T, H, D] over each sequence's cached keys (new K/V already written); -> [T, H*D]."""
    plan = meta.plan()
    t, h, d = q.shape
    kvh = kv.k.shape[3]
    if len(plan.groups) == 1 and not plan.singles and plan.groups[0].rows is None:
        return _group_attention(q, kv, layer, plan.groups[0], kvh).reshape(t, h * d)
    out = torch.empty(t, h, d, dtype=q.dtype)
    if plan.kernel is not None:
        kb = plan.kernel
        kernels.paged_attention_short(q, kv.k[layer], kv.v[layer], kb.block_tables, kb.q_starts, kb.q_lens,
                                      kb.ctx_lens, out)
    for g in plan.groups:
        qg = q if g.rows is None else q.index_select(0, g.rows)
        res = _group_attention(qg, kv, layer, g, kvh)
        if g.rows is None:
            out.copy_(res)
        else:
            out.index_copy_(0, g.rows, res)
    for s in plan.singles:
        qs = q[s.start:s.end].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        if s.block_ids is None:
            ks = k_new[s.start:s.end].transpose(0, 1).unsqueeze(0)
            vs = v_new[s.start:s.end].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=h != kvh)
        else:
            ks = kv.gather("k", layer, s.block_ids).view(1, -1, kvh, d).transpose(1, 2)
            vs = kv.gather("v", layer, s.block_ids).view(1, -1, kvh, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=s.mask, enable_gqa=h != kvh)
        out[s.start:s.end] = o[0].transpose(0, 1)
    return out.view(t, h * d)


def _group_attention(q: torch.Tensor, kv: KVCache, layer: int, g: _Group, kvh: int) -> torch.Tensor:
    """One gather of the group's blocks and one SDPA; q [S*ql, H, D] -> [S*ql, H, D].

    GQA without expanding K/V: the H/kvh query heads that share a KV head become extra query rows of that head.
    """
    _, h, d = q.shape
    grp = h // kvh
    s, ql = g.num_seqs, g.query_len
    ks = kv.gather("k", layer, g.block_ids).view(s, g.num_keys, kvh, d).transpose(1, 2)
    vs = kv.gather("v", layer, g.block_ids).view(s, g.num_keys, kvh, d).transpose(1, 2)
    if ql == 1:
        o = F.scaled_dot_product_attention(q.view(s, kvh, grp, d), ks, vs, attn_mask=g.mask)
        return o.reshape(s, h, d)
    if g.row_mask is None:
        g.row_mask = g.mask.repeat_interleave(grp, dim=2)  # [S, 1, ql*grp, keys], row t*grp + j = query t
    qs = q.view(s, ql, kvh, grp, d).permute(0, 2, 1, 3, 4).reshape(s, kvh, ql * grp, d)
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=g.row_mask)
    return o.view(s, kvh, ql, grp, d).permute(0, 2, 1, 3, 4).reshape(s * ql, h, d)
