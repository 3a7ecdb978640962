"""Keep freed host memory for reuse, so CPU inference does not pay page faults on every tensor.

glibc's ``malloc`` serves large blocks with ``mmap`` and hands freed memory at the top of the
heap back to the kernel. A ViT forward pass allocates and frees activations of 10-50 MB per
layer; when they go back to the kernel, the next layer's tensors are new pages, and the first
write to each 4 KiB page is a page fault that the kernel zero-fills. Measured on AdaCLIP at
the golden configuration (ViT-B-16 at 240 px, batch 4, 2 cores): ~66,000 page faults and
0.34 s of kernel time per call, ~9% of its wall time; with :func:`reuse_freed_memory` ~1,000
and 0.03 s. PyTorch's CPU allocator has no cache of its own (its tuning guide suggests jemalloc
or tcmalloc through ``LD_PRELOAD``, which a notebook cannot do after start-up); ``mallopt``
gives glibc's allocator the same habit from inside the process.

The settings are process-wide and only ever raise glibc's thresholds: up to ``trim_threshold``
of freed memory stays with the process instead of the kernel. ``evaluate_detector`` and the
training loop call :func:`reuse_freed_memory` for CPU work; ``CLIPAD_REUSE_FREED_MEMORY=0``
turns it off. On a C library without ``mallopt`` (macOS, musl) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1   # glibc <malloc.h>: free memory above this at the heap top goes back to the kernel
M_MMAP_THRESHOLD = -3   # glibc <malloc.h>: blocks at least this large get their own mmap (unmapped on free)

DEFAULT_MMAP_THRESHOLD = 64 << 20    # larger than one ViT-B/L activation of a batch; glibc's own cap is 32 MiB
DEFAULT_TRIM_THRESHOLD = 256 << 20   # at most this much freed memory is kept

_applied: tuple[int, int] | None = None


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def reuse_freed_memory(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                       trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Ask glibc to keep freed blocks below ``mmap_threshold`` bytes in the heap, and up to
    ``trim_threshold`` bytes of free heap, for reuse. Returns True when the settings are in force
    (applied now or by an earlier call with the same values); False when switched off by
    ``CLIPAD_REUSE_FREED_MEMORY=0`` or the C library has no ``mallopt``.
    """
    global _applied
    if os.environ.get("CLIPAD_REUSE_FREED_MEMORY", "1").strip() == "0":
        return False
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not isinstance(value, int) or not 0 < value < 2 ** 31:
            raise ValueError(f"{name} must be a positive int below 2 GiB (mallopt takes an int), got {value!r}")
    if _applied == (mmap_threshold, trim_threshold):
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    _applied = (mmap_threshold, trim_threshold) if ok else None
    return ok


def reuse_freed_memory_for(device) -> bool:
    """:func:`reuse_freed_memory` when ``device`` (a torch.device or its name) is the CPU."""
    return str(device).split(":")[0] == "cpu" and reuse_freed_memory()
