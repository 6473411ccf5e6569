"""Native CPU kernels, built on first use with the system C compiler and loaded with ctypes.

The paged-attention kernel reads K/V straight from the block tables instead of gathering them into a dense
tensor first (see paged_attention.c). It is optional: without a C compiler, or with LOOPSTACK_LLM_KERNELS=0,
the engine uses the pure-torch gather + SDPA path, which gives the same results within float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from loopstack.llm.config import default_cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_attention.c")
# -ffast-math compiles only: linking with it would add crtfastmath.o, whose constructor switches the whole
# process to flush-subnormals-to-zero (every float op in Python, numpy and torch would change).
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC"]
LINK_FLAGS = ["-shared", "-fopenmp"]
ENV_SWITCH = "LOOPSTACK_LLM_KERNELS"  # "0" disables the native kernels (pure-torch path)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_key() -> str:
    """Compiler, machine and CPU flags: a -march=native build is only valid on the CPU it was built for."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def _build(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_o, tmp_so = Path(tmp) / "kernel.o", Path(tmp) / out.name
        compile_, link = [cc, *FLAGS, "-c", "-o", str(tmp_o), str(SOURCE)], [cc, *LINK_FLAGS, "-o", str(tmp_so),
                                                                              str(tmp_o), "-lm"]
        for cmd in (compile_, link):
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp_so, out)  # atomic: concurrent builders never load a half-written library


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it into the cache folder once; None if disabled or unavailable."""
    global _lib, _tried
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    with _lock:
        if _tried:
            return _lib
        _tried = True
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if cc is None:
            log.warning("no C compiler found: paged attention uses the slower pure-torch path")
            return None
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS + LINK_FLAGS).encode() + cc.encode()
                             + _cpu_key().encode()).hexdigest()[:16]
        so = default_cache_dir() / "kernels" / f"paged_attention-{key}.so"
        try:
            if not so.is_file():
                _build(cc, so)
                for old in so.parent.glob("paged_attention-*.so"):  # builds of older sources or flags
                    if old != so:
                        old.unlink(missing_ok=True)
            lib = ctypes.CDLL(str(so))
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            log.warning("building the paged-attention kernel failed (%s): using the pure-torch path", detail[-500:])
            return None
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        for fn in (lib.loopstack_paged_attention_f32, lib.loopstack_paged_attention_f16):
            fn.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_float,
                           i64, i64]
            fn.restype = ctypes.c_int
        _lib = lib
        return _lib


def reset() -> None:
    """Forget the loaded library (tests toggle LOOPSTACK_LLM_KERNELS)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False


def paged_attention_short(
    q: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor, block_tables: torch.Tensor,
    q_starts: torch.Tensor, q_lens: torch.Tensor, ctx_lens: torch.Tensor, out: torch.Tensor,
) -> None:
    """Attention of short queries (rows q_starts[s] .. +q_lens[s] of q [T, H, D]) over paged K/V, into out.

    k_layer / v_layer are one layer's [num_blocks, block_size, kvh, D] float32 or float16 cache (q and out are
    float32); block_tables [S, *] int64. The sequences are spread over torch's own OpenMP threads
    (torch.get_num_threads()); the GIL is released during the call.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"the paged-attention kernel is not available (set {ENV_SWITCH}=0 to use torch)")
    _, h, d = q.shape
    _, bs, kvh, _ = k_layer.shape
    if q.stride(2) != 1 or q.stride(1) != d or out.stride(2) != 1 or out.stride(1) != d:
        raise ValueError("paged_attention_short needs q and out with contiguous heads ([T, H, D], unit stride in D)")
    args = (q.data_ptr(), q.stride(0), k_layer.data_ptr(), v_layer.data_ptr(), block_tables.data_ptr(),
            block_tables.stride(0), q_starts.data_ptr(), q_lens.data_ptr(), ctx_lens.data_ptr(), out.data_ptr(),
            out.stride(0), h, kvh, d, bs, d ** -0.5)
    fn = {torch.float32: lib.loopstack_paged_attention_f32, torch.float16: lib.loopstack_paged_attention_f16}.get(
        k_layer.dtype)
    if fn is None or q.dtype != torch.float32 or out.dtype != torch.float32 or v_layer.dtype != k_layer.dtype:
        raise ValueError(f"paged_attention_short: K/V must both be float32 or float16 and q/out float32, got "
                         f"{k_layer.dtype}/{v_layer.dtype} and {q.dtype}/{out.dtype}")
    if fn(*args, q_starts.numel(), torch.get_num_threads()):
        raise MemoryError("paged-attention kernel could not allocate its scratch buffers")
