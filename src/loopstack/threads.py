"""OS-level names for loopstack's long-lived threads, so `top -H`, `ps -L`, `perf` and /proc show which
one uses the CPU (Python's thread names stay inside the interpreter on 3.11)."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15
_prctl = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):   # pragma: no cover - no libc with prctl
        _prctl = None


def name_os_thread(name: str | None = None) -> bool:
    """Give the calling thread `name` (default: its Python name) in the OS; Linux keeps the first 15 bytes.
    True if it was set; elsewhere (or if prctl fails) nothing happens and False is returned."""
    if _prctl is None:
        return False
    raw = (name or threading.current_thread().name).encode("utf-8", "replace")[:15]
    return _prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) == 0
