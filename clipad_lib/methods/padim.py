"""PaDiM: a Gaussian per patch position of ImageNet WideResNet-50 features, Mahalanobis scores.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2020 workshops, arXiv:2011.08785. The "PaDiM" row of CLIP-FSAC++ Tab. I-III.

Facts from the paper (§3, §4.1) and the authors' reference code (PaDiM-Anomaly-Detection-
Localization, ``main.py``):

* features: ``layer1``, ``layer2``, ``layer3`` of the WideResNet-50; the deeper maps are brought to
  ``layer1``'s grid by repeating each cell (the code's unfold/fold ``embedding_concat`` is
  nearest-neighbour upsampling by the integer stride ratio) and concatenated (1792 channels);
* 550 of the 1792 channels are kept, drawn once with Python's ``random.seed(1024);
  random.sample(range(1792), 550)`` (100 of 448 for ResNet-18) — the same draw is made here;
* per position: the mean and the covariance of the training vectors (``np.cov``, unbiased) plus
  0.01 I, inverted;
* scores: the Mahalanobis distance of each test vector to its position's Gaussian; the map is
  upsampled bilinearly (``align_corners=False``) to the input and smoothed with sigma 4; the image
  score is the map's maximum. (The code then min-max normalises over the test set, which changes
  no ranking and is left out.)

Few-shot (CLIP-FSAC++'s 1-8 shots): with K >= 2 the regularised covariance is what the code
computes. With K = 1 the unbiased estimate divides 0 by 0 (``np.cov`` returns NaN); here the
one-sample covariance is taken as 0, so Sigma = 0.01 I and the score is a scaled Euclidean
distance to the single reference — the only finite reading of the code at one shot.
Covariances and their inverse Cholesky factors are computed in float64 and stored in float32. Other differences:
the whole image resized to 224 instead of resize 256 + centre crop 224 (see :mod:`.cnn_detector`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..validation import Each, ValidatedConfig
from .base import POSITIVE, POSITIVE_INT, FitData, Prediction
from .cnn_detector import CNN_CONSTRAINTS, CNN_SMOKE_CHANGES, STAGE, CNNDetector
from .registry import register_method

# Positions per covariance / inverse computation: bounds memory at CHUNK x d x d doubles.
POSITION_CHUNK = 256


@dataclass(frozen=True)
class PaDiMConfig(ValidatedConfig):
    backbone: str = "wide_resnet50_2"       # PaDiM §4.1 (WR50-Rd550), reference code --arch wide_resnet50_2
    pretrained: str | None = "tv_in1k"      # torchvision's ImageNet weights (reference code: pretrained=True)
    image_size: int = 224                   # reference code: resize 256, crop 224
    stages: tuple[int, ...] = (1, 2, 3)     # §3: the first three layers
    feature_dims: int = 550                 # §4.1, reference code: d = 550 of 1792 for WR50 (100 of 448 for R18)
    selection_seed: int = 1024              # reference code: random.seed(1024) before random.sample
    covariance_epsilon: float = 0.01        # §3 (Eq. 1) and reference code: + 0.01 I
    gaussian_sigma: float = 4.0             # reference code: gaussian_filter(sigma=4)
    smoothing_boundary: str = "reflect"     # scipy.ndimage.gaussian_filter's default
    batch_size: int = 32                    # reference code: DataLoader(batch_size=32)
    device: str = "cpu"

    constraints: ClassVar[dict] = {
        **CNN_CONSTRAINTS, "stages": [Each(STAGE)], "feature_dims": [POSITIVE_INT], "selection_seed": [int],
        "covariance_epsilon": [POSITIVE],
    }

    def check(self):
        if not self.stages or list(self.stages) != sorted(set(self.stages)):
            self.fail("stages", "expected increasing ResNet stages (1..4), the finest first")


@register_method("padim", display_name="PaDiM", config=PaDiMConfig, fits_on=("references",),
                 paper="Defard et al., PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and "
                       "Localization, ICPR 2020 workshops, arXiv:2011.08785",
                 smoke_changes={**CNN_SMOKE_CHANGES, "feature_dims": 100})
class PaDiMDetector(CNNDetector):
    """``fit`` estimates a Gaussian per position from the references; ``predict`` scores by Mahalanobis."""

    name = "padim"

    def __init__(self, config: PaDiMConfig = PaDiMConfig(), backbone=None):
        super().__init__(config, backbone)
        channels = sum(self.backbone.channels[s] for s in config.stages)
        if config.feature_dims > channels:
            config.fail("feature_dims", f"{config.backbone} stages {list(config.stages)} have {channels} channels "
                                        f"in all; choose at most {channels}")
        # The reference code's draw, reproduced: random.seed(1024); random.sample(range(t_d), d).
        chosen = random.Random(config.selection_seed).sample(range(channels), config.feature_dims)
        self.selected = torch.tensor(chosen, dtype=torch.long)
        self.mean: torch.Tensor | None = None       # [P, d]
        self.whitening: torch.Tensor | None = None  # [P, d, d]: L^-1 with Sigma = L L^T, lower triangular

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, P, d]: the selected channels at every position of the first stage's grid."""
        maps = self.backbone.stage_features(images.to(self.config.device), self.config.stages)
        size = maps[0].shape[-2:]
        joined = torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="nearest") for m in maps[1:]], dim=1)
        return joined[:, self.selected.to(joined.device)].flatten(2).transpose(1, 2)

    def fit(self, data: FitData) -> "PaDiMDetector":
        """Per position, the mean and the inverse Cholesky factor of the (regularised) covariance."""
        vectors = torch.cat([self.embeddings(batch) for batch in self._batches(self._references(data))])  # [K, P, d]
        count, positions, dims = vectors.shape
        vectors = vectors.double()
        mean = vectors.mean(dim=0)
        identity = torch.eye(dims, dtype=torch.float64, device=vectors.device)
        whitening = []
        for start in range(0, positions, POSITION_CHUNK):
            centred = (vectors[:, start:start + POSITION_CHUNK] - mean[start:start + POSITION_CHUNK]).transpose(0, 1)
            covariance = centred.transpose(1, 2) @ centred / max(count - 1, 1)  # [chunk, d, d]; K = 1: zero
            # Sigma = L L^T (positive definite: + eps I), so the Mahalanobis distance is |L^-1 delta|.
            # A triangular solve; torch's inv / cholesky_inverse take 10-100x longer on these
            # matrices, most of whose rows are the all-zero channels of the ReLU features.
            factor = torch.linalg.cholesky(covariance + self.config.covariance_epsilon * identity)
            whitening.append(torch.linalg.solve_triangular(factor, identity.expand_as(factor), upper=False).float())
        self.mean, self.whitening = mean.float(), torch.cat(whitening)
        return self

    @torch.no_grad()
    def distance_map(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, h, w]: Mahalanobis distance of each position to its Gaussian."""
        self._require_fit(self.mean is not None)
        delta = self.embeddings(images) - self.mean  # [B, P, d]
        whitened = torch.einsum("pij,bpj->bpi", self.whitening, delta)
        grid = self.backbone.grid(self.config.stages[0])
        return torch.linalg.vector_norm(whitened, dim=-1).reshape(len(images), grid, grid)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names=None) -> Prediction:
        """images [B, 3, S, S] -> image scores [B] (map maximum) and maps [B, S, S]."""
        maps = self._pixel_map(self.distance_map(images), images.shape[-1])
        return Prediction(image_scores=maps.flatten(1).max(dim=1).values.cpu(), anomaly_maps=maps.cpu())
