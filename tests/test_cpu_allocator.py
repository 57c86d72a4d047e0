"""After keep_large_allocations glibc serves large blocks from the heap, not fresh mmaps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Allocates a 64 MiB array (above glibc's largest automatic mmap threshold, 32 MiB)
# and asks glibc (mallinfo2) whether it came from a fresh mmap or from the heap.
CODE = """
import ctypes, sys
import numpy as np
import torch
if sys.argv[1] == "tune":
    from mscn_geo.cpu_allocator import keep_large_allocations
    print(keep_large_allocations())
elif sys.argv[1] == "model":  # what classify does on CPU
    from mscn_geo.pipeline import prepare_model
    prepare_model(torch.nn.Linear(2, 2), torch.device("cpu"), None)
    print(True)
else:
    print(False)
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
for _ in range(3):
    a = np.ones(64 << 20, np.uint8)
    mapped = libc.mallinfo2().hblkhd
    del a
print("mmap" if mapped >= 64 << 20 else "heap")
"""


def _source(mode: str, **env: str) -> tuple[str, str]:
    """(whether the thresholds were set, where the 64 MiB block came from)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", CODE, mode],
        capture_output=True,
        text=True,
        env={**clean, **env},
        check=True,
    )
    applied, source = proc.stdout.split()
    return applied, source


def test_large_blocks_come_from_the_heap_once_tuned():
    assert _source("none") == ("False", "mmap")
    assert _source("tune") == ("True", "heap")


def test_preparing_a_cpu_model_tunes_the_allocator():
    assert _source("model") == ("True", "heap")


def test_a_users_own_malloc_setting_is_kept():
    assert _source("tune", MALLOC_MMAP_THRESHOLD_=str(1 << 20)) == ("False", "mmap")
