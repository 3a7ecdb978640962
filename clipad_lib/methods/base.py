"""The protocol every method meets the rest of the code through: ``fit`` and ``predict``."""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..backbones import architecture
from ..data.transforms import ImageTransform
from ..validation import Each, Interval, ValidatedConfig

POSITIVE_INT = Interval(int, 1, None)
NON_NEGATIVE = Interval(float, 0, None)
POSITIVE = Interval(float, 0, None, closed="neither")
PROBABILITY = Interval(float, 0, 1)
LAYERS = Each(POSITIVE_INT)
# The fields every CLIP method's config has: which backbone, at what resolution, where.
BACKBONE_CONSTRAINTS = {"backbone": [str], "pretrained": [str, None], "image_size": [POSITIVE_INT], "device": [str]}


def check_layers(config: ValidatedConfig, *names: str) -> None:
    """Fail unless every 1-based layer in the fields ``names`` exists in ``config.backbone``."""
    depth = architecture(config.backbone).layers
    for name in names:
        if max(getattr(config, name)) > depth:
            config.fail(name, f"{config.backbone} has layers 1..{depth} (1-based)")


@dataclass
class Prediction:
    """What a detector says about a batch.

    image_scores: [B] — higher is more anomalous.
    anomaly_maps: [B, H, W] at the input resolution — higher is more anomalous; None from a
        classification-only method (its evaluation then has no pixel metrics).
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor | None


@dataclass
class FitData:
    """What a method may learn from: k-shot normal references and/or an auxiliary dataset.

    reference_images: [K, 3, S, S] normal images, already transformed, or None.
    auxiliary: a dataset of annotated images from categories other than the test ones, or None.
    class_name: the category of the references (methods that train text-side parts need it).
    seed: the run's seed, for methods that draw random things while fitting (synthetic anomalies).
    """

    reference_images: torch.Tensor | None = None
    auxiliary: Any = None
    class_name: str | None = None
    seed: int = 0


class Detector(abc.ABC):
    """A method: a config dataclass, an input transform, ``fit`` and ``predict``.

    Built as ``Detector(config, backbone=None)`` (``backbone`` shares an encoder already built)
    and registered with :func:`~clipad_lib.methods.registry.register_method`. ``backbone`` is the
    frozen encoder whose documented transform (``ImageTransform.for_backbone``) it uses.
    """

    name: str
    config: Any
    backbone: Any
    localizes: bool = True  # False for classification-only methods (their maps are None)

    @property
    @abc.abstractmethod
    def transform(self) -> ImageTransform:
        """How images must be prepared for :meth:`predict`."""

    @abc.abstractmethod
    def fit(self, data: FitData) -> "Detector":
        """Learn what the method learns (memory bank, prompts, adapters); returns self."""

    def finalize_scores(self, image_scores, anomaly_maps, class_names: Sequence[str]):
        """Dataset-level post-processing of image scores after every batch is predicted.

        image_scores: [N] numpy; anomaly_maps: [N, S, S] numpy. The default changes nothing;
        a method whose published recipe normalizes over the test set (APRIL-GAN few-shot)
        overrides it, so that step is explicit.
        """
        return image_scores

    @abc.abstractmethod
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """Score a batch [B, 3, S, S] of transformed images.

        ``class_names`` (one per image, the dataset's category names) feed the text prompts of
        CLIP methods; methods that use no text ignore them.
        """


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """[B, h, w] -> [B, size, size], bilinear (how every CLIP-AD method brings patch maps to pixels)."""
    return F.interpolate(maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)


def upsample_patch_logits(logits: torch.Tensor, size: int) -> torch.Tensor:
    """[B, N, 2] patch-text logits -> [B, 2, size, size], bilinear with align_corners=True
    (as the APRIL-GAN and AdaCLIP code bases upsample them)."""
    batch, count, states = logits.shape
    grid = int(round(count ** 0.5))
    maps = logits.transpose(1, 2).reshape(batch, states, grid, grid)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)


SMOOTHING_BOUNDARIES = ("reflect", "mirror")


def _boundary_indices(size: int, radius: int, boundary: str, device) -> torch.Tensor:
    """Source index of every position in [-radius, size + radius) under the boundary rule.

    "reflect" repeats the edge pixel (d c b a | a b c d | d c b a): scipy.ndimage's default.
    "mirror" does not (d c b | a b c d | c b a): torch's and torchvision's "reflect" padding.
    Taken modulo the period, so a radius larger than the map still folds back correctly.
    """
    positions = torch.arange(-radius, size + radius, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * size if boundary == "reflect" else 2 * size - 2
    folded = positions % period
    return torch.where(folded >= size, period - 1 - folded if boundary == "reflect" else period - folded, folded)


# Up to this side the separable smoothing runs as one float64 matrix product per axis with the
# [side, side] matrix that folds the boundary rule and the kernel together; beyond it (where that
# dense matrix would cost more than the convolution) as the padded conv1d.
SMOOTHING_MATRIX_MAX_SIDE = 1024


def _gaussian_kernel(sigma: float, device=None) -> torch.Tensor:
    """scipy's 1-D Gaussian: truncated at ``int(4 sigma + 0.5)`` pixels, normalized, float64."""
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=64)
def _smoothing_matrix(size: int, sigma: float, boundary: str, device: str) -> torch.Tensor:
    """[size, size] float64 M with ``line @ M`` = the line smoothed under ``boundary``:
    M[i, j] = sum of the kernel taps of output j that read source position i after folding.
    Built on the CPU (a deterministic accumulation) and cached per device; never modified."""
    kernel = _gaussian_kernel(sigma)
    taps = kernel.numel()
    radius = taps // 2
    index = _boundary_indices(size, radius, boundary, "cpu")  # [size + 2r]
    outputs = torch.arange(size)
    sources = index[outputs[:, None] + torch.arange(taps)[None, :]]  # [size, taps]: what output j's taps read
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.index_put_((sources.reshape(-1), outputs.repeat_interleave(taps)), kernel.repeat(size), accumulate=True)
    return matrix.to(device)


def gaussian_smooth(maps: torch.Tensor, sigma: float, boundary: str = "reflect") -> torch.Tensor:
    """[B, H, W] Gaussian-smoothed with ``sigma`` pixels, as ``scipy.ndimage.gaussian_filter``.

    The kernel is scipy's (truncated at ``int(4 sigma + 0.5)`` pixels, normalized), applied along
    each axis in float64 on the maps' device. ``boundary``: "reflect" (scipy's default, which the
    official AdaCLIP and PatchCore code smooth with) or "mirror" (torchvision's ``gaussian_blur``).

    Each axis is one batched float64 matrix product with the boundary-folded kernel matrix
    (:func:`_smoothing_matrix`), for maps up to :data:`SMOOTHING_MATRIX_MAX_SIDE` pixels a side;
    it equals the padded convolution up to float64 rounding (~1e-16), and costs the same per image
    at any batch size (CPU float64 conv1d has no fast kernel and slows down with the batch).
    """
    if boundary not in SMOOTHING_BOUNDARIES:
        raise ValueError(f"boundary must be one of {SMOOTHING_BOUNDARIES}, got {boundary!r}")
    if sigma <= 0:
        return maps
    smoothed = maps.to(torch.float64)
    batch, height, width = smoothed.shape
    if max(height, width) <= SMOOTHING_MATRIX_MAX_SIDE:
        device = str(maps.device)
        smoothed = smoothed @ _smoothing_matrix(width, float(sigma), boundary, device)  # along W
        smoothed = _smoothing_matrix(height, float(sigma), boundary, device).T @ smoothed  # along H
        return smoothed.to(maps.dtype)
    radius = int(4 * sigma + 0.5)
    kernel = _gaussian_kernel(sigma, maps.device).view(1, 1, -1)
    for axis, size in ((1, height), (2, width)):
        index = _boundary_indices(size, radius, boundary, maps.device)
        padded = smoothed.index_select(axis, index)  # [B, size + 2r, other] or [B, other, size + 2r]
        lines = padded.movedim(axis, -1)
        shape = lines.shape
        filtered = F.conv1d(lines.reshape(-1, 1, shape[-1]), kernel).reshape(*shape[:-1], size)
        smoothed = filtered.movedim(-1, axis)
    return smoothed.to(maps.dtype)
