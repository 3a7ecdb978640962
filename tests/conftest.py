"""Shared fixtures: an isolated cache (so the synthetic set is generated as a new user's would be)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Before clipad_lib is imported anywhere: caches and results go to a throwaway folder.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="clipad-tests-"))
os.environ["CLIPAD_CACHE"] = str(_SESSION_DIR / "cache")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (-n 2 on 2 cores): two threads each would oversubscribe the cores, and
    # OpenMP's spinning threads then slow small ops down by 10-100x. Notebook kernels and SLURM
    # jobs started by a test inherit the limit through the environment.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_root() -> Path:
    from clipad_lib.data import ensure_synthetic_dataset

    return ensure_synthetic_dataset()


@pytest.fixture(scope="session")
def synthetic_train(synthetic_root):
    from clipad_lib.data import load_dataset

    return load_dataset("synthetic", "train", root=synthetic_root)


@pytest.fixture(scope="session")
def synthetic_test(synthetic_root):
    from clipad_lib.data import load_dataset

    return load_dataset("synthetic", "test", root=synthetic_root)


@pytest.fixture(scope="session")
def tiny_backbone():
    from clipad_lib.backbones import build_clip

    torch.manual_seed(0)
    return build_clip("clipad-tiny-ViT", None, image_size=64)
