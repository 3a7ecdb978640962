"""The one place images and masks are resized and normalized for a backbone.

Images: PIL bicubic resize straight to ``size x size`` (no crop, so masks stay aligned), then
scaled to [0, 1] and normalized with the backbone's own mean/std (CLIP's by default).
Masks: nearest-neighbour resize, so they stay binary. This is what the CLIP-AD code bases do;
a crop or a different interpolation changes the numbers, so every run record stores
:meth:`ImageTransform.describe`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from .sample import DatasetError, Sample

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class ImageTransform:
    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    mask_interpolation: str = "nearest"

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")

    @classmethod
    def for_backbone(cls, backbone) -> "ImageTransform":
        """The transform matching a :class:`ClipBackbone`'s resolution and normalization."""
        return cls(size=backbone.image_size, mean=tuple(backbone.mean), std=tuple(backbone.std))

    def image(self, image: np.ndarray) -> torch.Tensor:
        """[H, W, 3] uint8 -> [3, size, size] float32, normalized."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DatasetError(f"expected an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
        resized = Image.fromarray(image).resize((self.size, self.size), _INTERPOLATIONS[self.interpolation])
        tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.normalize(tensor[None])[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> normalized with this transform's mean and std (no resize)."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def mask(self, mask: np.ndarray | None) -> torch.Tensor:
        """[H, W] bool (or None = all normal) -> [size, size] bool."""
        if mask is None:
            return torch.zeros(self.size, self.size, dtype=torch.bool)
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (self.size, self.size), _INTERPOLATIONS[self.mask_interpolation]
        )
        return torch.from_numpy(np.asarray(resized) > 127)

    def unnormalize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalized -> [B, S, S, 3] in [0, 1], for display."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1)

    def to_uint8(self, images: torch.Tensor) -> np.ndarray:
        """[B, 3, S, S] normalized -> [B, S, S, 3] uint8 (normalization undone, then rounded): the
        pixels again, for methods that synthesize anomalies from transformed shots."""
        return (self.unnormalize(images.cpu()) * 255.0).round().to(torch.uint8).numpy()

    def describe(self) -> dict:
        return asdict(self)


class TransformedDataset(torch.utils.data.Dataset):
    """Wraps an :class:`AnomalyDataset` for a DataLoader: dicts of image, mask, label, index."""

    def __init__(self, dataset, transform: ImageTransform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample: Sample = self.dataset[index]
        if self.dataset.has_pixel_labels and sample.label == 1 and sample.mask is None:
            raise DatasetError(f"anomalous sample {sample.path} has no mask, but its dataset has pixel labels")
        return {
            "image": self.transform.image(sample.image),
            "mask": self.transform.mask(sample.mask),
            "label": sample.label,
            "category": sample.category,
            "index": index,
        }
