"""Seeded k-shot selection of normal reference images, written beside the results."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .sample import NORMAL, AnomalyDataset, DatasetError, SampleRecord

# k = FULL_SHOT: every normal training image of the category (the full-shot setting of PatchCore,
# PaDiM, CDO: AdaCLIP supp. Tab. 8, CLIP-FSAC++ Tab. IV).
FULL_SHOT = "full"


def sample_k_shot(train: AnomalyDataset, category: str, k: int | str, seed: int) -> list[SampleRecord]:
    """Draw ``k`` normal training images of ``category`` without replacement.

    The draw is from the path-sorted list with a generator seeded by (seed, category), so the
    same seed always picks the same files, whatever other categories the dataset holds.
    ``k = FULL_SHOT`` ("full") returns every normal training image (the seed plays no part).
    """
    if k == FULL_SHOT:
        k = len([r for r in train.subset(category=category).records if r.label == NORMAL]) or 1
    elif not isinstance(k, int) or isinstance(k, bool):
        raise DatasetError(f"k must be a number of shots or {FULL_SHOT!r} (every normal training image), got {k!r}")
    if k < 1:
        raise DatasetError(f"k must be at least 1, got {k}")
    candidates = [r for r in train.subset(category=category).records if r.label == NORMAL]
    if not candidates:
        raise DatasetError(
            f"category {category!r} of {train.name} has no normal training image; "
            "few-shot methods need normal references (check the train/ folder)"
        )
    if k > len(candidates):
        raise DatasetError(
            f"k={k} but category {category!r} of {train.name} has only {len(candidates)} normal training "
            f"image(s); choose k <= {len(candidates)}"
        )
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    chosen = sorted(rng.choice(len(candidates), size=k, replace=False).tolist())
    return [candidates[i] for i in chosen]


def write_k_shot_list(path: Path, records: list[SampleRecord], *, dataset: str, category: str, k: int | str,
                      seed: int, root: Path | None = None) -> Path:
    """Write the chosen reference files as JSON (paths relative to ``root`` when given), atomically."""
    files = [str(r.image_path.relative_to(root)) if root else str(r.image_path) for r in records]
    payload = {"dataset": dataset, "category": category, "k": k, "seed": seed, "files": files}
    return atomic_write(path, json.dumps(payload, indent=2))


def read_k_shot_list(path: Path, root: Path | None = None) -> list[Path]:
    """The reference image paths a k-shot list file names (re-rooted at ``root`` when given)."""
    payload = json.loads(Path(path).read_text())
    return [Path(root) / f if root else Path(f) for f in payload["files"]]
