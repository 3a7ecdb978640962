"""WinCLIP and WinCLIP+: zero-/few-shot anomaly classification and segmentation with windows.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023.
Facts cross-checked with anomalib's implementation:

* backbone ViT-B/16+ at 240 px (LAION-400M, epoch 31): a 15x15 patch grid;
* compositional prompt ensemble (22 templates x 7 normal / 4 abnormal states), each state's
  sentences averaged into one text embedding;
* window embeddings: for every k x k window of patches (k = 2, 3; stride 1) the class token and
  the window's tokens alone go through the transformer; a window's score is
  softmax(cos(window, text) / 0.07)[abnormal];
* harmonic aggregation: a patch's score is the harmonic mean of the windows covering it; the
  full-image score joins as one more scale and the scales are combined by a harmonic mean;
* WinCLIP+ (few-shot): visual association scores (1 − max cosine) / 2 of patch tokens and of
  window embeddings against the same of the k normal references, aggregated the same way and
  averaged over scales; final map = (zero-shot + few-shot) / 2, image score =
  (zero-shot score + max of the few-shot map) / 2;
* maps are upsampled bilinearly; no smoothing;
* text ensemble (``text_ensemble``): ``"paper"`` (default) uses the 22 templates and averages
  normalized sentence embeddings; ``"anomalib"`` uses anomalib's 21 templates averaged raw, which
  reproduces anomalib's WinCLIP (the two maps differ by ~5e-4 on a random CLIP).

Window tokens are taken after ``ln_pre``; since that LayerNorm acts on each token alone this
equals taking them before it, as the reference implementations do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..backbones import architecture, build_clip
from ..data.transforms import ImageTransform
from ..validation import Each, Options, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, Detector, FitData, Prediction,
                   gaussian_smooth)
from .registry import register_method
from .text_prompts import ANOMALIB_WINCLIP_ENSEMBLE, WINCLIP_ENSEMBLE, cached_text_embeddings

TEXT_ENSEMBLES = {"paper": WINCLIP_ENSEMBLE, "anomalib": ANOMALIB_WINCLIP_ENSEMBLE}


@dataclass(frozen=True)
class WinCLIPConfig(ValidatedConfig):
    backbone: str = "ViT-B-16-plus-240"   # WinCLIP §4.1
    pretrained: str | None = "laion400m_e31"  # WinCLIP §4.1 (LAION-400M)
    image_size: int = 240                 # WinCLIP §4.1
    scales: tuple[int, ...] = (2, 3)      # window sizes in patches (WinCLIP §3.2)
    temperature: float = 0.07             # CLIP's temperature (anomalib TEMPERATURE)
    gaussian_sigma: float = 0.0           # no smoothing in the reference implementation
    # "paper": the 22 templates of WinCLIP's supp., each sentence normalized before the mean;
    # "anomalib": anomalib's 21 templates averaged raw (reproduces anomalib's WinCLIP exactly).
    text_ensemble: str = "paper"
    batch_size: int = 8
    device: str = "cpu"

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "scales": [Each(POSITIVE_INT)], "temperature": [POSITIVE],
        "gaussian_sigma": [NON_NEGATIVE], "batch_size": [POSITIVE_INT],
        "text_ensemble": [Options(tuple(TEXT_ENSEMBLES))],
    }

    def check(self):
        grid = architecture(self.backbone).grid_size(self.image_size)
        if max(self.scales) > grid:
            self.fail("scales", f"a window is at most the patch grid: {self.backbone} at {self.image_size} px has "
                                f"{grid}x{grid} patches")


def window_indices(grid: int, kernel: int, stride: int = 1) -> torch.Tensor:
    """Patch indices of every kernel x kernel window of a grid x grid patch grid -> [windows, kernel²]."""
    if kernel > grid:
        raise ValueError(f"window size {kernel} exceeds the {grid}x{grid} patch grid")
    index = torch.arange(grid * grid, dtype=torch.float32).reshape(1, 1, grid, grid)
    return F.unfold(index, kernel_size=kernel, stride=stride)[0].long().T


def harmonic_aggregation(window_scores: torch.Tensor, windows: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-patch harmonic mean of the scores of the windows covering it.

    Args:
        window_scores: [B, W]; windows: [W, k²] patch indices; grid: side of the patch grid.
    Returns:
        [B, grid, grid]. A window scoring 0 makes its patches 0, as the harmonic mean does.
    """
    batch = window_scores.shape[0]
    flat = windows.reshape(-1).to(window_scores.device)  # [W·k²]
    reciprocal = (1.0 / window_scores).repeat_interleave(windows.shape[1], dim=1)  # [B, W·k²]
    sums = window_scores.new_zeros(batch, grid * grid).index_add_(1, flat, reciprocal)
    counts = torch.bincount(flat, minlength=grid * grid).to(window_scores.dtype)
    return (counts / sums).nan_to_num(nan=0.0, posinf=0.0).reshape(batch, grid, grid)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-2, -1)


@register_method("winclip", display_name="WinCLIP", config=WinCLIPConfig, fits_on=("nothing", "references"),
                 paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, CVPR 2023, "
                       "arXiv:2303.14814",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64})
class WinCLIPDetector(Detector):
    """Zero-shot without ``fit``; WinCLIP+ after ``fit(FitData(reference_images=...))``."""

    name = "winclip"

    def __init__(self, config: WinCLIPConfig = WinCLIPConfig(), backbone=None):
        self.config = config
        self.backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size, config.device)
        self.grid = self.backbone.grid_size
        self.windows = [window_indices(self.grid, scale) for scale in config.scales]
        self._transform = ImageTransform.for_backbone(self.backbone)
        self._text: dict[str, torch.Tensor] = {}
        self.reference: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """images [B, 3, S, S] -> (image embedding [B, D], patch tokens [B, N, C] after ln_post,
        window embeddings per scale [B, W, D])."""
        backbone = self.backbone
        tokens = backbone.image_input_tokens(images.to(self.config.device))  # [B, 1 + N, C], after ln_pre
        image_embedding, patch_tokens = backbone.pool_image_tokens(backbone.run_image_transformer(tokens))
        window_embeddings = []
        for windows in self.windows:
            batch, count = tokens.shape[0], windows.shape[0]
            selected = tokens[:, 1:][:, windows.to(tokens.device)]  # [B, W, k², C]
            cls = tokens[:, :1, None].expand(-1, count, -1, -1)  # [B, W, 1, C]
            sequences = torch.cat([cls, selected], dim=2).reshape(batch * count, -1, tokens.shape[-1])
            window_pooled = backbone.pooled_image_embedding(sequences)  # only the class token is read
            window_embeddings.append(window_pooled.reshape(batch, count, -1))
        return image_embedding, patch_tokens, window_embeddings

    def _text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """[B, 2, D], cached per class (the text tower is frozen)."""
        return cached_text_embeddings(self._text, self.backbone, TEXT_ENSEMBLES[self.config.text_ensemble],
                                      list(class_names))

    def _abnormal_probability(self, embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[B, ..., D] against [B, 2, D] -> [B, ...] softmax(cos / T)[abnormal]."""
        flat = embeddings.reshape(embeddings.shape[0], -1, embeddings.shape[-1])
        logits = _cosine(flat, text) / self.config.temperature
        return logits.softmax(dim=-1)[..., 1].reshape(embeddings.shape[:-1])

    def fit(self, data: FitData) -> "WinCLIPDetector":
        """Store the reference images' patch tokens and window embeddings (WinCLIP+)."""
        if data.reference_images is None or len(data.reference_images) == 0:
            raise ValueError("WinCLIP needs no training; fit(FitData(reference_images=...)) makes it WinCLIP+")
        patches, windows = [], [[] for _ in self.windows]
        for start in range(0, len(data.reference_images), self.config.batch_size):
            _, patch_tokens, window_embeddings = self.encode(data.reference_images[start:start + self.config.batch_size])
            patches.append(patch_tokens.reshape(-1, patch_tokens.shape[-1]))
            for scale, embedding in enumerate(window_embeddings):
                windows[scale].append(embedding.reshape(-1, embedding.shape[-1]))
        self.reference = (torch.cat(patches), [torch.cat(w) for w in windows])
        return self

    @staticmethod
    def _association(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Visual association score (1 − max cosine) / 2: [B, M, D] vs [R, D] -> [B, M]."""
        return (1.0 - _cosine(embeddings, reference[None]).amax(dim=-1)) / 2

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] and category names -> scores [B] and maps [B, S, S]."""
        if class_names is None or len(class_names) != len(images):
            raise ValueError("WinCLIP needs one class name per image (its text prompts name the object)")
        image_embedding, patch_tokens, window_embeddings = self.encode(images)
        text = self._text_embeddings(list(class_names))
        grid = self.grid
        image_scores = self._abnormal_probability(image_embedding, text)  # [B]
        scales = [image_scores[:, None, None].expand(-1, grid, grid)]
        for embedding, windows in zip(window_embeddings, self.windows):
            scales.append(harmonic_aggregation(self._abnormal_probability(embedding, text), windows, grid))
        score_map = len(scales) / (1.0 / torch.stack(scales)).sum(dim=0)
        if self.reference is not None:
            reference_patches, reference_windows = self.reference
            few_shot = [self._association(patch_tokens, reference_patches).reshape(-1, grid, grid)]
            for embedding, reference, windows in zip(window_embeddings, reference_windows, self.windows):
                few_shot.append(harmonic_aggregation(self._association(embedding, reference), windows, grid))
            few_shot_map = torch.stack(few_shot).mean(dim=0)
            score_map = (score_map + few_shot_map) / 2
            image_scores = (image_scores + few_shot_map.flatten(1).amax(dim=1)) / 2
        maps = F.interpolate(score_map[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = gaussian_smooth(maps, self.config.gaussian_sigma)
        return Prediction(image_scores=image_scores.float().cpu(), anomaly_maps=maps.float().cpu())
