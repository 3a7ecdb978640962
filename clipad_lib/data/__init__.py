"""Datasets: manifests, readers, the synthetic embedded dataset and the k-shot sampler."""
from __future__ import annotations

from pathlib import Path

from .kshot import FULL_SHOT, read_k_shot_list, sample_k_shot, write_k_shot_list
from .manifest import Counts, Manifest, VerificationReport, list_manifests, load_manifest, read_split, verify_dataset
from .sample import ANOMALOUS, NORMAL, AnomalyDataset, DatasetError, Sample, SampleRecord, load_image, load_sample
from .synthetic import SyntheticSpec, ensure_synthetic_dataset

SYNTHETIC = "synthetic"


def dataset_root(name: str, root: str | Path | None = None) -> Path:
    """The folder of a dataset: ``root`` if given; the generated cache for ``synthetic``;
    otherwise ``$CLIPAD_DATA/<manifest.default_dirname>``. Missing data fails naming the
    manifest and its download hint."""
    manifest = load_manifest(name)
    if root is None and manifest.name == SYNTHETIC:
        return ensure_synthetic_dataset()
    return manifest.resolve_root(root)


def load_dataset(name: str, split: str = "test", root: str | Path | None = None,
                 categories: list[str] | None = None, unmasked: str = "refuse") -> AnomalyDataset:
    """Read one split of a dataset by name, with the layout its manifest declares.

    An anomalous image without its mask is refused (``unmasked="drop"`` leaves such images out and
    lists them in ``dataset.dropped``; see :func:`read_split`).
    """
    manifest = load_manifest(name)
    return read_split(manifest, dataset_root(name, root), split, categories, unmasked)


__all__ = [
    "ANOMALOUS", "NORMAL", "SYNTHETIC", "AnomalyDataset", "Counts", "DatasetError", "Manifest", "Sample",
    "SampleRecord", "SyntheticSpec", "VerificationReport", "dataset_root", "ensure_synthetic_dataset",
    "list_manifests", "load_dataset", "load_image", "load_manifest", "load_sample", "read_k_shot_list",
    "FULL_SHOT", "read_split", "sample_k_shot", "verify_dataset", "write_k_shot_list",
]
