"""PatchCore on an ImageNet WideResNet-50: locally aware patch features, a coreset memory, 1-NN scores.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, arXiv:2106.08265.
This is the "PatchCore" row of AdaCLIP supp. Tab. 8 (full-shot) and CLIP-FSAC++ Tab. I-III (few-shot);
the CLIP-token memory of this workbook is a different method, ``clip_patch_memory``.

Facts from the official code (amazon-science/patchcore-inspection, ``run_patchcore.py`` with the
README's MVTec command ``-b wideresnet50 -le layer2 -le layer3 --pretrain_embed_dimension 1024
--target_embed_dimension 1024 --anomaly_scorer_num_nn 1 --patchsize 3 sampler -p 0.1
approx_greedy_coreset``):

* features: ``layer2`` and ``layer3``; each map is unfolded into 3x3 neighbourhoods (zero padding
  1, stride 1: the "locally aware" patches, Eq. 4); ``layer3``'s unfolded map is resized to
  ``layer2``'s grid (bilinear, ``align_corners=False``); per layer, each flattened (C, 3, 3) vector
  is average-pooled to 1024 values (``adaptive_avg_pool1d``), the two layers are stacked and pooled
  again to 1024;
* memory: all training patches, subsampled to 10 % by the approximate greedy coreset (10 starting
  points, 128-d random projection; :func:`~.memory_bank.approximate_greedy_coreset`);
* scores: squared L2 distance to the nearest memory patch (faiss ``IndexFlatL2`` returns squared
  distances); the image score is the largest patch score (the code's ``PatchMaker.score``; the
  paper's re-weighting of Eq. 7 is not in the code); the map is the patch scores upsampled
  bilinearly to the input and smoothed with sigma 4 (``RescaleSegmentor``).

Differences: exact search in torch instead of faiss (same distances up to float rounding), a
seeded Gaussian projection for the coreset instead of an untrained ``nn.Linear``, and the whole
image resized to 224 instead of resize 256 + centre crop 224 (see :mod:`.cnn_detector`).
In few-shot runs the memory holds the k references' patches, subsampled by the same 10 %.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..validation import Each, Interval, ValidatedConfig
from .base import POSITIVE_INT, FitData, Prediction
from .cnn_detector import CNN_CONSTRAINTS, CNN_SMOKE_CHANGES, STAGE, CNNDetector
from .memory_bank import nearest_distances, subsample
from .registry import register_method


@dataclass(frozen=True)
class PatchCoreConfig(ValidatedConfig):
    backbone: str = "wide_resnet50_2"       # official README: -b wideresnet50
    pretrained: str | None = "tv_in1k"      # torchvision's ImageNet weights (its backbones.py loads them)
    image_size: int = 224                   # official README: --imagesize 224
    stages: tuple[int, ...] = (2, 3)        # -le layer2 -le layer3 (PatchCore §3.1)
    patch_size: int = 3                     # --patchsize 3 (§4.1: neighbourhood p = 3)
    pretrain_embed_dim: int = 1024          # --pretrain_embed_dimension 1024
    target_embed_dim: int = 1024            # --target_embed_dimension 1024
    coreset_ratio: float = 0.1              # sampler -p 0.1 (§4.1: PatchCore-10 %)
    coreset_projection_dim: int = 128       # ApproximateGreedyCoresetSampler default (supp. A)
    coreset_starting_points: int = 10       # ApproximateGreedyCoresetSampler default
    num_neighbours: int = 1                 # --anomaly_scorer_num_nn 1
    gaussian_sigma: float = 4.0             # RescaleSegmentor.smoothing
    smoothing_boundary: str = "reflect"     # scipy.ndimage.gaussian_filter's default, as RescaleSegmentor
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0                           # coreset projection and starting points (run_patchcore --seed 0)

    constraints: ClassVar[dict] = {
        **CNN_CONSTRAINTS, "stages": [Each(STAGE)], "patch_size": [POSITIVE_INT],
        "pretrain_embed_dim": [POSITIVE_INT], "target_embed_dim": [POSITIVE_INT],
        "coreset_ratio": [Interval(float, 0, 1, closed="right")], "coreset_projection_dim": [POSITIVE_INT],
        "coreset_starting_points": [POSITIVE_INT], "num_neighbours": [POSITIVE_INT], "seed": [int],
    }

    def check(self):
        if self.patch_size % 2 == 0:
            self.fail("patch_size", "expected an odd neighbourhood side (the official code pads (p - 1) / 2)")
        if not self.stages:
            self.fail("stages", "expected at least one ResNet stage (1..4)")


@register_method("patchcore", display_name="PatchCore", config=PatchCoreConfig, fits_on=("references",),
                 paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022, arXiv:2106.08265",
                 smoke_changes=CNN_SMOKE_CHANGES)
class PatchCoreDetector(CNNDetector):
    """``fit`` stores the (coreset of the) references' patch features; ``predict`` scores by 1-NN."""

    name = "patchcore"

    def __init__(self, config: PatchCoreConfig = PatchCoreConfig(), backbone=None):
        super().__init__(config, backbone)
        self.memory: torch.Tensor | None = None

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, h, w, target_embed_dim] on the first stage's grid (h = S / stride)."""
        config = self.config
        maps = self.backbone.stage_features(images.to(config.device), config.stages)
        height, width = maps[0].shape[-2:]
        per_layer = []
        for feature in maps:
            batch, channels = feature.shape[:2]
            # [B, C*p*p, h*w], channel order (C, p, p) as torch.nn.Unfold (and the official code) lay it out
            unfolded = F.unfold(feature, config.patch_size, padding=(config.patch_size - 1) // 2)
            unfolded = unfolded.reshape(batch, channels * config.patch_size ** 2, *feature.shape[-2:])
            if unfolded.shape[-2:] != (height, width):
                unfolded = F.interpolate(unfolded, size=(height, width), mode="bilinear", align_corners=False)
            vectors = unfolded.flatten(2).transpose(1, 2).reshape(-1, 1, unfolded.shape[1])  # [B*h*w, 1, C*p*p]
            per_layer.append(F.adaptive_avg_pool1d(vectors, config.pretrain_embed_dim)[:, 0])
        stacked = torch.stack(per_layer, dim=1).reshape(len(per_layer[0]), 1, -1)  # [B*h*w, 1, L*D]
        pooled = F.adaptive_avg_pool1d(stacked, config.target_embed_dim)[:, 0]
        return pooled.reshape(len(images), height, width, config.target_embed_dim)

    def fit(self, data: FitData) -> "PatchCoreDetector":
        """Memory = coreset of every patch feature of the references [K, 3, S, S]."""
        references = self._references(data)
        bank = torch.cat([self.patch_features(batch).reshape(-1, self.config.target_embed_dim)
                          for batch in self._batches(references)])
        config = self.config
        self.memory = subsample(bank, config.coreset_ratio, config.coreset_projection_dim,
                                config.coreset_starting_points, config.seed)
        return self

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, h, w]: mean squared L2 distance of each patch to its nearest memory patches."""
        self._require_fit(self.memory is not None)
        features = self.patch_features(images)
        batch, height, width, dims = features.shape
        return nearest_distances(features.reshape(-1, dims), self.memory, self.config.num_neighbours,
                                 squared=True).mean(dim=1).reshape(batch, height, width)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names=None) -> Prediction:
        """images [B, 3, S, S] -> image scores [B] (largest patch score) and maps [B, S, S]."""
        scores = self.patch_scores(images)
        image_scores = scores.flatten(1).max(dim=1).values
        return Prediction(image_scores=image_scores.cpu(), anomaly_maps=self._pixel_map(scores, images.shape[-1]).cpu())
