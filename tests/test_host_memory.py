"""Freed host memory is reused, not page-faulted back: measured in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipad_lib import host_memory

ROOT = Path(__file__).resolve().parents[1]

# Allocates and fills a 48 MiB tensor 20 times (above glibc's 32 MiB cap on its own mmap
# threshold, so every one is a fresh mapping unless mallopt says otherwise) and counts page faults,
# on one thread so that only the allocator is counted (OpenMP workers add faults of their own).
PROGRAM = """
import json, resource, sys, torch
torch.set_num_threads(1)
from clipad_lib.host_memory import applied_settings, reuse_freed_memory
applied = reuse_freed_memory()
for _ in range(8):  # warm-up: glibc settles after a few rounds (the first five fault here, tuned or not)
    torch.ones(12 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(12 << 20)
print(json.dumps({"applied": applied, "settings": applied_settings(),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(reuse: bool) -> dict:
    env = {**os.environ, "CLIPAD_REUSE_FREED_MEMORY": "1" if reuse else "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_tensors_are_reused_instead_of_faulted_back():
    off, on = _faults(reuse=False), _faults(reuse=True)
    assert off["applied"] is False and off["settings"] == {} and on["applied"] is True
    if on["settings"]["mmap_threshold"] <= 48 << 20:
        pytest.skip(f"this glibc caps the mmap threshold at {on['settings']['mmap_threshold']} bytes")
    assert off["faults"] > 20 * 10_000  # each 48 MiB fill faults in ~12,000 fresh 4 KiB pages
    assert on["faults"] < off["faults"] / 20


def test_bad_thresholds_are_refused_and_the_switch_is_honoured(monkeypatch):
    monkeypatch.delenv("CLIPAD_REUSE_FREED_MEMORY", raising=False)
    with pytest.raises(ValueError, match="mmap_threshold must be a positive int"):
        host_memory.reuse_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError, match="trim_threshold must be a positive int"):
        host_memory.reuse_freed_memory(trim_threshold=2 ** 40)
    monkeypatch.setattr(host_memory, "_applied", {})
    monkeypatch.setenv("CLIPAD_REUSE_FREED_MEMORY", "0")
    assert host_memory.reuse_freed_memory() is False and host_memory.applied_settings() == {}
    monkeypatch.delenv("CLIPAD_REUSE_FREED_MEMORY")
    assert host_memory.reuse_freed_memory_for("cuda:0") is False and host_memory.applied_settings() == {}
    if sys.platform.startswith("linux"):
        assert host_memory.reuse_freed_memory_for(torch.device("cpu")) is True
        assert host_memory.applied_settings()["trim_threshold"] == host_memory.DEFAULT_TRIM_THRESHOLD
