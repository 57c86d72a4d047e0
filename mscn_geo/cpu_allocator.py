"""Keep large CPU tensors' memory in the process heap instead of fresh ``mmap``s (glibc).

glibc serves every allocation above its mmap threshold (128 KiB, raised on its
own up to 32 MiB) with a new ``mmap`` and unmaps it when freed, so each batch's
activations and temporaries fault in and zero fresh pages. Eager PyTorch on the
CPU spent about a quarter of its time so: the bundled model (batch 16, 2 cores)
ran 49.7 tiles/s as started, 64.1 with the mmap threshold at 128 MiB and the
trim threshold at 256 MiB, peak RSS unchanged (1,035 vs 1,025 MiB); ONNX Runtime,
which keeps its own arena, runs the same either way. :func:`keep_large_allocations`
sets both thresholds once per process, where glibc is the allocator and the
user has not set them (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a
``glibc.malloc`` tunable in ``GLIBC_TUNABLES``). Under another allocator
(jemalloc or tcmalloc preloaded) glibc's settings have no effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_large_allocations"]

#: Allocations up to this size come from the heap (bytes).
MMAP_THRESHOLD = 128 << 20
#: Free memory at the top of the heap kept for reuse before it is returned (bytes).
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_lock = threading.Lock()
_applied: bool | None = None


def _user_chose() -> bool:
    env = os.environ
    tunables = env.get("GLIBC_TUNABLES", "")
    return (
        "MALLOC_MMAP_THRESHOLD_" in env
        or "MALLOC_TRIM_THRESHOLD_" in env
        or "glibc.malloc." in tunables
    )


def keep_large_allocations() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); whether they are set.

    False where the C library is not glibc, where the user set them, or where
    ``mallopt`` refuses.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def _apply() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _user_chose():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. The mmap threshold first: setting it also stops
    # glibc from moving both thresholds on its own.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
