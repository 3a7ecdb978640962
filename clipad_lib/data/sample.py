"""The records every reader produces, and image/mask loading with errors that name the file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

NORMAL, ANOMALOUS = 0, 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset is missing, malformed, or does not match its manifest."""


@dataclass(frozen=True)
class SampleRecord:
    """Where one sample lives on disk, before anything is decoded.

    ``mask_path`` is None for normal samples and for datasets with image labels only.
    ``defect`` is the defect type folder (``"good"`` for normal samples).
    """

    image_path: Path
    mask_path: Path | None
    label: int
    category: str
    defect: str
    split: str


@dataclass
class Sample:
    """One decoded sample.

    image: [H, W, 3] uint8 RGB. mask: [H, W] bool (True = anomalous) or None when the sample
    has no pixel annotation (normal samples, image-level datasets).
    """

    image: np.ndarray
    mask: np.ndarray | None
    label: int
    category: str
    defect: str
    path: Path


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to [H, W, 3] uint8 RGB, or fail naming the file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(
            f"cannot decode image {path} ({exc}); the file is corrupt or not an image: "
            "re-download it or remove it from the dataset"
        ) from None


def load_mask(path: Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """Decode a mask (any non-zero pixel is anomalous) and check it matches its image size."""
    try:
        with Image.open(path) as mask:
            array = np.asarray(mask.convert("L")) > 0
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode mask {path} ({exc}); re-download it") from None
    if array.shape != tuple(expected_hw):
        raise DatasetError(
            f"mask {path} is {array.shape[1]}x{array.shape[0]} (WxH) but its image is "
            f"{expected_hw[1]}x{expected_hw[0]}; masks must have their image's size"
        )
    return array


def load_sample(record: SampleRecord) -> Sample:
    """Decode the image (and mask, if any) of one record."""
    image = load_image(record.image_path)
    mask = load_mask(record.mask_path, image.shape[:2]) if record.mask_path is not None else None
    return Sample(image, mask, record.label, record.category, record.defect, record.image_path)


class AnomalyDataset(Sequence[Sample]):
    """A sorted, lazily decoded list of samples of one dataset split.

    Indexing decodes the image on demand, so building a dataset costs only a directory scan.
    """

    def __init__(self, name: str, records: Sequence[SampleRecord], has_pixel_labels: bool = True):
        self.name = name
        self.records = sorted(records, key=lambda r: (r.category, str(r.image_path)))
        self.has_pixel_labels = has_pixel_labels
        self.dropped: list[Path] = []  # images read_split left out (unmasked="drop")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [load_sample(r) for r in self.records[index]]
        return load_sample(self.records[index])

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.records})

    def labels(self) -> np.ndarray:
        """[N] int labels in dataset order, without decoding anything."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def subset(self, category: str | None = None, label: int | None = None) -> "AnomalyDataset":
        """The samples of one category and/or label; an unknown category lists the known ones."""
        if category is not None and category not in self.categories:
            raise DatasetError(
                f"unknown category {category!r} in {self.name}; known categories: {', '.join(self.categories)}"
            )
        chosen = [
            r
            for r in self.records
            if (category is None or r.category == category) and (label is None or r.label == label)
        ]
        return AnomalyDataset(self.name, chosen, self.has_pixel_labels)

    def __repr__(self) -> str:
        normal = int((self.labels() == NORMAL).sum())
        return (
            f"AnomalyDataset({self.name!r}, {len(self)} samples: {normal} normal, "
            f"{len(self) - normal} anomalous, {len(self.categories)} categories)"
        )
