"""SPADE: kNN of ImageNet WideResNet-50 image features, then pixel kNN among the nearest images.

Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences",
arXiv:2005.02357. The "SPADE" row of CLIP-FSAC++ Tab. I-III.

From the paper (§3-4; there is no official code, and this follows the paper where the community
re-implementations differ):

* image score: the mean Euclidean distance of the test image's global feature (average-pooled
  ``layer4``, 2048-d) to its K = 50 nearest normal training images (§3.1, §4);
* pixel score: for each ResNet stage of the pyramid (``layer1``, ``layer2``, ``layer3``), the
  distance of each test position's feature to its kappa = 1 nearest feature among *all positions*
  of the K nearest normal images (the gallery, §3.2); the per-stage maps are upsampled bilinearly
  to the input, averaged, and smoothed with a Gaussian of sigma 4.

Few-shot: K is capped at the number of references, so with 1-8 shots every reference is a
neighbour and the gallery is every reference — one batched search for a whole batch. Only when
the references outnumber ``gallery_images`` does each image get its own gallery (one search per
image; that is what the method asks for). The whole image is resized to 224 instead of resize 256
+ centre crop 224 (see :mod:`.cnn_detector`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..validation import Each, ValidatedConfig
from .base import POSITIVE_INT, FitData, Prediction, gaussian_smooth, upsample_maps
from .cnn_detector import CNN_CONSTRAINTS, CNN_SMOKE_CHANGES, STAGE, CNNDetector
from .memory_bank import nearest_distances
from .registry import register_method


@dataclass(frozen=True)
class SPADEConfig(ValidatedConfig):
    backbone: str = "wide_resnet50_2"       # SPADE §4: WideResNet-50 x 2 pretrained on ImageNet
    pretrained: str | None = "tv_in1k"
    image_size: int = 224                   # §4: images resized to 256, centre-cropped to 224
    image_neighbours: int = 50              # K = 50 (§4)
    gallery_images: int = 50                # the K nearest images form the pixel gallery (§3.2)
    pixel_neighbours: int = 1               # kappa = 1 (§4)
    pixel_stages: tuple[int, ...] = (1, 2, 3)  # the feature pyramid: the first three ResNet stages (§3.2)
    gaussian_sigma: float = 4.0             # §4: Gaussian filter, sigma = 4
    smoothing_boundary: str = "reflect"
    batch_size: int = 8
    device: str = "cpu"

    constraints: ClassVar[dict] = {
        **CNN_CONSTRAINTS, "image_neighbours": [POSITIVE_INT], "gallery_images": [POSITIVE_INT],
        "pixel_neighbours": [POSITIVE_INT], "pixel_stages": [Each(STAGE)],
    }

    def check(self):
        if not self.pixel_stages:
            self.fail("pixel_stages", "expected at least one ResNet stage (1..4)")


@register_method("spade", display_name="SPADE", config=SPADEConfig, fits_on=("references",),
                 paper="Cohen and Hoshen, Sub-Image Anomaly Detection with Deep Pyramid Correspondences, "
                       "arXiv:2005.02357",
                 smoke_changes=CNN_SMOKE_CHANGES)
class SPADEDetector(CNNDetector):
    """``fit`` keeps the references' global features and feature pyramids; ``predict`` runs both kNNs."""

    name = "spade"

    def __init__(self, config: SPADEConfig = SPADEConfig(), backbone=None):
        super().__init__(config, backbone)
        self.image_features: torch.Tensor | None = None  # [K, C4]
        self.pyramid: list[torch.Tensor] | None = None   # per pixel stage [K, h, w, C]

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[B, 3, S, S] -> global features [B, C4] and per pixel stage [B, h, w, C]."""
        stages = tuple(self.config.pixel_stages)
        maps = self.backbone.stage_features(images.to(self.config.device), stages + (4,))
        pooled = maps[-1].mean(dim=(2, 3))
        return pooled, [m.permute(0, 2, 3, 1) for m in maps[:len(stages)]]

    def fit(self, data: FitData) -> "SPADEDetector":
        parts = [self._features(batch) for batch in self._batches(self._references(data))]
        self.image_features = torch.cat([p[0] for p in parts])
        self.pyramid = [torch.cat([p[1][i] for p in parts]) for i in range(len(self.config.pixel_stages))]
        return self

    def _stage_map(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """queries [B, h, w, C], gallery [G, h, w, C] -> [B, h, w] distance to the kappa nearest gallery features."""
        batch, height, width, channels = queries.shape
        nearest = nearest_distances(queries.reshape(-1, channels), gallery.reshape(-1, channels),
                                    self.config.pixel_neighbours)
        return nearest.mean(dim=1).reshape(batch, height, width)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names=None) -> Prediction:
        """images [B, 3, S, S] -> image scores [B] (mean kNN distance) and maps [B, S, S]."""
        self._require_fit(self.image_features is not None)
        config, size = self.config, images.shape[-1]
        pooled, pyramid = self._features(images)
        references = len(self.image_features)
        distances = torch.cdist(pooled, self.image_features)  # [B, K]
        nearest = torch.topk(distances, min(config.image_neighbours, references), dim=1, largest=False)
        image_scores = nearest.values.mean(dim=1)
        if config.gallery_images >= references:  # every image's gallery is every reference: one batched search
            stage_maps = [self._stage_map(q, g) for q, g in zip(pyramid, self.pyramid)]
        else:
            galleries = torch.topk(distances, config.gallery_images, dim=1, largest=False).indices
            stage_maps = [torch.cat([self._stage_map(q[i:i + 1], g[galleries[i]]) for i in range(len(images))])
                          for q, g in zip(pyramid, self.pyramid)]
        maps = torch.stack([upsample_maps(m, size) for m in stage_maps]).mean(dim=0)
        maps = gaussian_smooth(maps, config.gaussian_sigma, config.smoothing_boundary)
        return Prediction(image_scores=image_scores.cpu(), anomaly_maps=maps.cpu())
