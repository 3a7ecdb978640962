"""Where things live: manifests, real datasets, caches, results. Each has an env-var override."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def manifests_dir() -> Path:
    """Folder of dataset manifests (``CLIPAD_MANIFESTS`` or ``<repo>/data_manifests``)."""
    return Path(os.environ.get("CLIPAD_MANIFESTS", REPO_ROOT / "data_manifests"))


def data_root() -> Path | None:
    """Parent folder of the real datasets (``CLIPAD_DATA``), or None when unset."""
    value = os.environ.get("CLIPAD_DATA")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Cache for generated data and features (``CLIPAD_CACHE`` or ``~/.cache/clipad``)."""
    return Path(os.environ.get("CLIPAD_CACHE", Path.home() / ".cache" / "clipad")).expanduser()


def weights_dir() -> Path | None:
    """Cache folder for pretrained weights (``CLIPAD_WEIGHTS``); None = the open_clip/HF default."""
    value = os.environ.get("CLIPAD_WEIGHTS")
    return Path(value).expanduser() if value else None


def results_dir(profile: str) -> Path:
    """Where a profile's results go (``CLIPAD_RESULTS/<profile>`` or ``<repo>/results/<profile>``)."""
    return Path(os.environ.get("CLIPAD_RESULTS", REPO_ROOT / "results")) / profile
