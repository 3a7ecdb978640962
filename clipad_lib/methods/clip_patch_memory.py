"""Few-shot patch-memory detector on CLIP patch tokens (PatchCore-style nearest neighbour).

The memory bank holds the patch tokens of the k normal reference images at several layers.
A test patch's anomaly score is its distance to the nearest memory patch of the same layer;
the per-layer maps are averaged, upsampled to the image, smoothed, and the image score is the
map's maximum. This is PatchCore (Roth et al., CVPR 2022) with a CLIP backbone, i.e. the
few-shot memory branch of APRIL-GAN/WinCLIP+, and the baseline the few-shot tables need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones import build_clip
from ..data.transforms import ImageTransform
from ..validation import Interval, Options, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, LAYERS, NON_NEGATIVE, POSITIVE_INT, SMOOTHING_BOUNDARIES, Detector, FitData,
                   Prediction, check_layers, gaussian_smooth, upsample_maps)
from .memory_bank import nearest_distances, subsample
from .registry import register_method

DISTANCES = ("cosine", "euclidean")


@dataclass(frozen=True)
class CLIPPatchMemoryConfig(ValidatedConfig):
    # Backbone and layers of the APRIL-GAN few-shot branch (APRIL-GAN §3.3 and its code):
    # ViT-L/14@336 (OpenAI), 518 px input, patch tokens of layers 6, 12, 18, 24.
    backbone: str = "ViT-L-14-336"
    pretrained: str | None = "openai"
    image_size: int = 518
    layers: tuple[int, ...] = (6, 12, 18, 24)
    # "cosine" = 1 - max cosine similarity (APRIL-GAN); "euclidean" = PatchCore's L2 distance.
    distance: str = "cosine"
    # Average each token with its 3x3 neighbours before matching (PatchCore §3.1 uses 3);
    # 1 = no aggregation, as APRIL-GAN.
    neighbourhood: int = 1
    # Fraction of memory patches kept by greedy coreset selection (PatchCore §3.2: 0.1 / 0.01
    # in full-shot); 1.0 keeps all, which is what few-shot memories of 1-8 images need.
    coreset_ratio: float = 1.0
    coreset_projection_dim: int = 128  # random projection for coreset distances (PatchCore supp. A)
    # (the selection is memory_bank.approximate_greedy_coreset, PatchCore's official sampler)
    # Gaussian smoothing of the final map, sigma = 4 px (PatchCore §4.1; AdaCLIP uses the same).
    gaussian_sigma: float = 4.0
    # scipy.ndimage.gaussian_filter's boundary (edge repeated), as the official PatchCore code
    # (patchcore-inspection, RescaleSegmentor) smooths; "mirror" = torchvision's blur.
    smoothing_boundary: str = "reflect"
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0  # coreset start point and projection

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "layers": [LAYERS], "distance": [Options(DISTANCES)], "neighbourhood": [POSITIVE_INT],
        "coreset_ratio": [Interval(float, 0, 1, closed="right")], "coreset_projection_dim": [POSITIVE_INT],
        "gaussian_sigma": [NON_NEGATIVE], "smoothing_boundary": [Options(SMOOTHING_BOUNDARIES)],
        "batch_size": [POSITIVE_INT], "seed": [int],
    }

    def check(self):
        check_layers(self, "layers")
        if self.neighbourhood % 2 == 0:
            self.fail("neighbourhood", "expected an odd number (the side of a centred window)")


@register_method("clip_patch_memory", display_name="CLIP patch memory (PatchCore-style, CLIP tokens)", config=CLIPPatchMemoryConfig, fits_on=("references",),
                 paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022, arXiv:2106.08265",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64,
                                "layers": (2, 4, 6, 8)})
class CLIPPatchMemoryDetector(Detector):
    """Nearest-neighbour patch memory on frozen CLIP tokens; ``fit`` takes k normal references."""

    name = "clip_patch_memory"

    def __init__(self, config: CLIPPatchMemoryConfig = CLIPPatchMemoryConfig(), backbone=None):
        self.config = config
        self.backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size, config.device)
        self._transform = ImageTransform.for_backbone(self.backbone)
        self.memory: list[torch.Tensor] | None = None

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per layer [B, N, C] patch features, neighbourhood-averaged and (cosine) normalized."""
        tokens, _ = self.backbone.patch_tokens(images.to(self.config.device), self.config.layers)
        grid = self.backbone.grid_size
        features = []
        for layer_tokens in tokens:
            if self.config.neighbourhood > 1:
                b, n, c = layer_tokens.shape
                spatial = layer_tokens.transpose(1, 2).reshape(b, c, grid, grid)
                spatial = F.avg_pool2d(spatial, self.config.neighbourhood, stride=1,
                                       padding=self.config.neighbourhood // 2, count_include_pad=False)
                layer_tokens = spatial.reshape(b, c, n).transpose(1, 2)
            if self.config.distance == "cosine":
                layer_tokens = F.normalize(layer_tokens, dim=-1)
            features.append(layer_tokens)
        return features

    def fit(self, data: FitData) -> "CLIPPatchMemoryDetector":
        """Store the patch tokens of ``data.reference_images`` [K, 3, S, S] as the memory bank."""
        references = data.reference_images
        if references is None or len(references) == 0:
            raise ValueError("CLIPPatchMemoryDetector.fit needs FitData(reference_images=[K, 3, S, S]) with K >= 1")
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.config.layers]
        for start in range(0, len(references), self.config.batch_size):
            for layer, feats in enumerate(self._features(references[start:start + self.config.batch_size])):
                per_layer[layer].append(feats.reshape(-1, feats.shape[-1]))
        memory = [torch.cat(chunks) for chunks in per_layer]
        self.memory = [subsample(bank, self.config.coreset_ratio, self.config.coreset_projection_dim,
                                 seed=self.config.seed) for bank in memory]
        return self

    def _nearest_distance(self, queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """[Q, C] queries vs [M, C] memory -> [Q] distance to the nearest memory row."""
        if self.config.distance == "cosine":
            return 1.0 - (queries @ bank.T).max(dim=1).values
        return nearest_distances(queries, bank)[:, 0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names=None) -> Prediction:
        """images [B, 3, S, S] -> image scores [B] and anomaly maps [B, S, S] (class names unused)."""
        if self.memory is None:
            raise RuntimeError("CLIPPatchMemoryDetector.predict called before fit()")
        grid = self.backbone.grid_size
        layer_maps = []
        for feats, bank in zip(self._features(images), self.memory):
            b, n, c = feats.shape
            distances = self._nearest_distance(feats.reshape(-1, c), bank)
            layer_maps.append(distances.reshape(b, grid, grid))
        patch_map = torch.stack(layer_maps).mean(dim=0)
        anomaly_maps = gaussian_smooth(upsample_maps(patch_map, images.shape[-1]), self.config.gaussian_sigma,
                                       self.config.smoothing_boundary)
        image_scores = anomaly_maps.flatten(1).max(dim=1).values
        return Prediction(image_scores=image_scores.cpu(), anomaly_maps=anomaly_maps.cpu())

