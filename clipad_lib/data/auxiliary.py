"""Auxiliary training data for zero-shot methods, and the guard that keeps them zero-shot."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .sample import AnomalyDataset, DatasetError, load_sample
from .transforms import ImageTransform


class ZeroShotViolation(DatasetError):
    """Auxiliary training data shares categories with the test data."""


def _normalized(name: str) -> str:
    return name.lower().replace("-", " ").replace("_", " ").strip()


def check_zero_shot(auxiliary_categories: Iterable[str], test_categories: Iterable[str]) -> None:
    """Refuse auxiliary data whose categories overlap the test categories (case, '-', '_' ignored)."""
    auxiliary = {_normalized(c): c for c in auxiliary_categories}
    overlap = sorted({c for c in test_categories if _normalized(c) in auxiliary})
    if overlap:
        raise ZeroShotViolation(
            f"auxiliary training data contains the test categories {overlap}; zero-shot evaluation needs "
            "categories never seen in training (AdaCLIP trains on MVTec AD + ClinicDB, or VisA + ColonDB when "
            "testing on MVTec AD or ClinicDB)"
        )


def auxiliary_datasets(auxiliary, method: str) -> list:
    """``FitData.auxiliary`` (one dataset or a list) as a list; None fails saying what ``method``'s
    ``fit`` needs."""
    if auxiliary is None:
        raise ValueError(f"{method}.fit needs FitData(auxiliary=<annotated datasets of other categories>)")
    return list(auxiliary) if isinstance(auxiliary, (list, tuple)) else [auxiliary]


class AuxiliaryTrainingSet(torch.utils.data.Dataset):
    """Annotated images of several datasets for training, optionally as 2x2 mosaics.

    With probability ``mosaic_prob`` an item is replaced by four random images of the same
    category pasted into a 2x2 grid with their masks (APRIL-GAN's augmentation, reused by
    AdaCLIP). Draws depend only on (seed, epoch, index), so an epoch is reproducible.
    Items: image [3, S, S], mask [S, S] float, label, category.
    """

    def __init__(self, datasets: Sequence[AnomalyDataset], transform: ImageTransform, mosaic_prob: float = 0.0,
                 seed: int = 0):
        if not datasets or not any(len(d) for d in datasets):
            raise DatasetError("auxiliary training data is empty")
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"mosaic_prob must be in [0, 1], got {mosaic_prob}")
        self.records = [(d, r) for d in datasets for r in d.records]
        self.transform = transform
        self.mosaic_prob = mosaic_prob
        self.seed = seed
        self.epoch = 0
        self.by_category: dict[str, list[int]] = {}
        for index, (_, record) in enumerate(self.records):
            self.by_category.setdefault(record.category, []).append(index)

    @property
    def categories(self) -> list[str]:
        return sorted(self.by_category)

    def __len__(self) -> int:
        return len(self.records)

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray, int, str]:
        dataset, record = self.records[index]
        sample = load_sample(record)
        if dataset.has_pixel_labels and sample.label == 1 and sample.mask is None:
            raise DatasetError(f"auxiliary image {record.image_path} is anomalous but has no mask")
        mask = sample.mask if sample.mask is not None else np.zeros(sample.image.shape[:2], bool)
        return sample.image, mask, sample.label, sample.category

    def _mosaic(self, category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        members = self.by_category[category]
        picks = rng.choice(members, size=4, replace=len(members) < 4)
        parts = [self._decoded(int(i)) for i in picks]
        height, width = parts[0][0].shape[:2]
        image = np.zeros((2 * height, 2 * width, 3), np.uint8)
        mask = np.zeros((2 * height, 2 * width), bool)
        for slot, (part_image, part_mask, _, _) in enumerate(parts):
            row, column = divmod(slot, 2)
            if part_image.shape[:2] != (height, width):
                part_image = np.asarray(Image.fromarray(part_image).resize((width, height), Image.BICUBIC))
                part_mask = np.asarray(Image.fromarray(part_mask).resize((width, height), Image.NEAREST))
            image[row * height:(row + 1) * height, column * width:(column + 1) * width] = part_image
            mask[row * height:(row + 1) * height, column * width:(column + 1) * width] = part_mask
        return image, mask, int(any(p[2] for p in parts))

    def __getitem__(self, index: int) -> dict:
        image, mask, label, category = self._decoded(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.mosaic_prob > 0 and rng.random() < self.mosaic_prob:
            image, mask, label = self._mosaic(category, rng)
        return {
            "image": self.transform.image(image),
            "mask": self.transform.mask(mask).float(),
            "label": label,
            "category": category,
        }
