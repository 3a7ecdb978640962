"""Reproducible randomness: a process-wide seed for notebooks, a local one for library code.

Notebooks (the drivers) call :func:`seed_everything` once. Library code never does: a detector
that needs random numbers (initialising its learnable parts, shuffling its training data) draws
them inside :func:`seeded`, which forks the RNGs, seeds the fork and restores the caller's state
afterwards — the way ``build_clip`` seeds a random-init backbone. So building or fitting a
detector gives the same numbers whatever ran before, and changes nothing for what runs after.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels where it has them.

    For notebooks and scripts only: it changes process-wide state.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch (CPU and visible CUDA devices), numpy and Python's ``random``
    seeded to ``seed``; every generator is restored on exit, exception or not."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
