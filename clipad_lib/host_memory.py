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

The settings are process-wide: up to ``trim_threshold`` of freed memory stays with the process
instead of the kernel (they replace glibc's defaults, or a ``MALLOC_MMAP_THRESHOLD_`` the user
set). ``evaluate_detector`` and the training loop call :func:`reuse_freed_memory` for CPU work;
``CLIPAD_REUSE_FREED_MEMORY=0`` keeps the process from setting them. On a C library without
``mallopt`` (macOS, musl) it does nothing and says so. A glibc that caps the mmap threshold at
32 MiB (``HEAP_MAX_SIZE / 2``, as some older releases do) gets 32 MiB.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1   # glibc <malloc.h>: free memory above this at the heap top goes back to the kernel
M_MMAP_THRESHOLD = -3   # glibc <malloc.h>: blocks at least this large get their own mmap (unmapped on free)

DEFAULT_MMAP_THRESHOLD = 64 << 20    # larger than one ViT-B/L activation of a batch; glibc's own cap is 32 MiB
FALLBACK_MMAP_THRESHOLD = 32 << 20   # what a glibc that refuses more accepts
DEFAULT_TRIM_THRESHOLD = 256 << 20   # at most this much freed memory is kept

_applied: dict[str, int] = {}


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def reuse_freed_memory(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                       trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Ask glibc to serve blocks below ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of free heap, for reuse.

    Returns True when this call set both (or an earlier call set these values already); False
    when ``CLIPAD_REUSE_FREED_MEMORY=0`` (nothing is set, though settings an earlier call made
    stay: glibc cannot be asked to undo them) or the C library has no ``mallopt``.
    :func:`applied_settings` says what is in force.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 31:
            raise ValueError(f"{name} must be a positive int below 2 GiB (mallopt takes an int), got {value!r}")
    if os.environ.get("CLIPAD_REUSE_FREED_MEMORY", "1").strip() == "0":
        return False
    if _applied.get("requested_mmap_threshold") == mmap_threshold and _applied.get("trim_threshold") == trim_threshold:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mmap = mmap_threshold if mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 else None
    if mmap is None and mmap_threshold > FALLBACK_MMAP_THRESHOLD and \
            mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD) == 1:
        mmap = FALLBACK_MMAP_THRESHOLD
    trim = trim_threshold if mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 else None
    if mmap is not None:
        _applied.update(mmap_threshold=mmap, requested_mmap_threshold=mmap_threshold)
    if trim is not None:
        _applied["trim_threshold"] = trim
    return mmap is not None and trim is not None


def applied_settings() -> dict[str, int]:
    """The thresholds this process has set (bytes): ``mmap_threshold``, ``trim_threshold`` and the
    ``requested_mmap_threshold`` (larger than ``mmap_threshold`` where glibc capped it); empty
    before any call took effect."""
    return dict(_applied)


def reuse_freed_memory_for(device) -> bool:
    """:func:`reuse_freed_memory` when ``device`` (a torch.device or its name) is the CPU."""
    return str(device).split(":")[0] == "cpu" and reuse_freed_memory()
