"""APRIL-GAN: learnable linear projections of CLIP patch tokens, zero- and few-shot.

Chen et al., "A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023
VAND Workshop Challenge" (APRIL-GAN). Facts from its official code (ByChelsea/VAND-APRIL-GAN):

* backbone: at the paper's 518 px its ``create_model`` builds ``CLIP(**model_cfg)`` — exact GELU —
  and resizes positional embeddings bicubically *with* antialias; only at the architecture's own
  resolution does it load OpenAI weights with QuickGELU (``AprilGANConfig.uses_quick_gelu``);
* zero-shot: one ``Linear(width -> embed_dim)`` per layer maps the raw patch tokens (no
  ``ln_post``) of layers 6, 12, 18, 24 of ViT-L/14@336 at 518 px into the text space; per layer
  ``softmax(100 · patch · text)`` upsampled bilinearly (align_corners) — the abnormal channels
  are *summed* over layers (no smoothing); image score = softmax(100 · CLIP image embedding ·
  text)[abnormal]. Text: the 35-template ensemble.
* training on auxiliary data: focal + dice (abnormal channel) per layer, Adam(lr 1e-3,
  betas 0.5/0.999), 3 epochs (MVTec) with the 4-image mosaic at rate 0.2.
* few-shot: a memory of the k references' raw tokens per layer; the map adds
  ``Σ_layers min(1 − cos)`` upsampled; the image score becomes
  ``0.5 · (text probability + per-class min-max normalised map maximum)`` over the test set
  (:meth:`finalize_scores`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import CheckpointError, architecture, build_clip, check_state_dict
from ..backbones.checkpoint_files import read_checkpoint
from ..data.auxiliary import AuxiliaryTrainingSet, ZeroShotViolation, auxiliary_datasets, check_zero_shot
from ..data.transforms import ImageTransform
from ..losses import dice_loss, focal_loss
from ..seeding import seeded
from ..training import train_epochs
from ..validation import Each, Interval, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, LAYERS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY, Detector, FitData,
                   Prediction, check_layers, gaussian_smooth, upsample_patch_logits)
from .registry import register_method
from .text_prompts import APRILGAN_ENSEMBLE, cached_text_embeddings


@dataclass(frozen=True)
class AprilGANConfig(ValidatedConfig):
    backbone: str = "ViT-L-14-336"           # official train.sh / test scripts
    pretrained: str | None = "openai"
    # None: the official rule. Its create_model loads OpenAI weights through load_openai_model
    # (QuickGELU) only at the architecture's own resolution; at any other (the paper's 518 on
    # ViT-L-14-336) it builds CLIP(**model_cfg), i.e. exact GELU, and its checkpoints were trained so.
    quick_gelu: bool | None = None
    pos_embed_antialias: bool = True         # its vendored open_clip resizes with antialias
    image_size: int = 518                    # official scripts
    layers: tuple[int, ...] = (6, 12, 18, 24)           # --features_list
    few_shot_layers: tuple[int, ...] = (6, 12, 18, 24)  # --few_shot_features
    epochs: int = 3                          # train.sh on MVTec (15 when trained on VisA)
    learning_rate: float = 0.001             # train.py
    betas: tuple[float, float] = (0.5, 0.999)  # train.py (Adam)
    batch_size: int = 64                     # train.sh
    mosaic_prob: float = 0.2                 # train.sh --aug_rate 0.2 (MVTec)
    gaussian_sigma: float = 0.0              # its test.py does not smooth the maps
    device: str = "cpu"
    seed: int = 111                          # train.py setup_seed(111)

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "quick_gelu": [bool, None], "pos_embed_antialias": [bool], "layers": [LAYERS],
        "few_shot_layers": [LAYERS], "epochs": [POSITIVE_INT], "learning_rate": [POSITIVE],
        "betas": [Each(Interval(float, 0, 1, closed="left"), length=2)],
        "batch_size": [POSITIVE_INT], "mosaic_prob": [PROBABILITY], "gaussian_sigma": [NON_NEGATIVE], "seed": [int],
    }

    def check(self):
        check_layers(self, "layers", "few_shot_layers")

    @property
    def uses_quick_gelu(self) -> bool:
        """``quick_gelu`` if set, else the official rule (OpenAI weights at the native resolution)."""
        if self.quick_gelu is not None:
            return self.quick_gelu
        return self.pretrained == "openai" and self.image_size == architecture(self.backbone).image_size


@register_method("aprilgan", display_name="APRIL-GAN", config=AprilGANConfig, fits_on=("auxiliary", "references"),
                 paper="Chen et al., A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023 "
                       "VAND Workshop Challenge Tracks 1&2, arXiv:2305.17382",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64,
                                "layers": (2, 4, 6, 8), "few_shot_layers": (2, 4, 6, 8), "epochs": 1,
                                "batch_size": 4})
class AprilGANDetector(Detector):
    """``fit(FitData(auxiliary=...))`` trains the projections; ``reference_images`` add the few-shot memory."""

    name = "aprilgan"

    def __init__(self, config: AprilGANConfig = AprilGANConfig(), backbone=None):
        self.config = config
        self.backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size,
                                               config.device, quick_gelu=config.uses_quick_gelu,
                                               pos_embed_antialias=config.pos_embed_antialias)
        self.backbone.layer_indices(config.layers + config.few_shot_layers)  # an unknown layer fails here
        with seeded(config.seed):  # the projections' initialisation, without touching the caller's RNG
            self.projections = nn.ModuleList(nn.Linear(self.backbone.width, self.backbone.embed_dim)
                                             for _ in config.layers).to(config.device)
        self._transform = ImageTransform.for_backbone(self.backbone)
        self._text: dict[str, torch.Tensor] = {}
        self.memory: list[torch.Tensor] | None = None
        self.trained_categories: list[str] = []
        self.loss_history: list[float] = []

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    @property
    def few_shot(self) -> bool:
        return self.memory is not None

    def _text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """[B, 2, D], cached per class (the text tower is frozen)."""
        return cached_text_embeddings(self._text, self.backbone, APRILGAN_ENSEMBLE, list(class_names))

    def _layer_logits(self, tokens: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        """Per layer [B, N, 2] = 100 · normalize(linear(token)) · text."""
        return [100.0 * torch.bmm(F.normalize(linear(t), dim=-1), text.transpose(1, 2))
                for linear, t in zip(self.projections, tokens)]

    # -- training ---------------------------------------------------------------------------

    def fit(self, data: FitData) -> "AprilGANDetector":
        """Train on ``data.auxiliary`` (if given) and store ``data.reference_images`` (if given) as memory."""
        if data.auxiliary is None and data.reference_images is None:
            raise ValueError("AprilGANDetector.fit needs auxiliary data, reference images, or both")
        if data.auxiliary is not None:
            self._train(data.auxiliary)
        self.memory = self._memory(data.reference_images) if data.reference_images is not None else None
        return self

    def _loss(self, batch: dict) -> torch.Tensor:
        """Focal + dice (abnormal channel) on every layer's map, as its train.py."""
        config = self.config
        images, masks = batch["image"].to(config.device), batch["mask"].to(config.device)
        with torch.no_grad():
            tokens, _ = self.backbone.patch_tokens(images, config.layers)
        text = self._text_embeddings(list(batch["category"]))
        loss = images.new_zeros(())
        for logits in self._layer_logits(tokens, text):
            probabilities = torch.softmax(upsample_patch_logits(logits, images.shape[-1]), dim=1)
            loss = loss + focal_loss(probabilities, masks) + dice_loss(probabilities[:, 1], masks)
        return loss

    def _train(self, auxiliary) -> None:
        config = self.config
        datasets = auxiliary_datasets(auxiliary, "AprilGANDetector")
        training_set = AuxiliaryTrainingSet(datasets, self.transform, config.mosaic_prob, config.seed)
        optimizer = torch.optim.Adam(self.projections.parameters(), lr=config.learning_rate, betas=config.betas)
        start = time.perf_counter()
        with seeded(config.seed):
            self.loss_history = train_epochs(self._loss, optimizer, training_set, epochs=config.epochs,
                                             batch_size=config.batch_size, seed=config.seed, desc="APRIL-GAN")
        self.trained_categories = training_set.categories
        self.fit_seconds = time.perf_counter() - start

    @torch.no_grad()
    def _memory(self, references: torch.Tensor) -> list[torch.Tensor]:
        """Per few-shot layer [K·N, C] normalized raw patch tokens of the references."""
        tokens, _ = self.backbone.patch_tokens(references.to(self.config.device), self.config.few_shot_layers)
        return [F.normalize(t.reshape(-1, t.shape[-1]), dim=-1) for t in tokens]

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] and category names -> scores [B] and maps [B, S, S]."""
        if class_names is None or len(class_names) != len(images):
            raise ValueError("APRIL-GAN needs one class name per image (its text prompts name the object)")
        check_zero_shot(self.trained_categories, class_names)
        config = self.config
        images = images.to(config.device)
        size = images.shape[-1]
        if self.few_shot:
            # One forward for both layer lists (it was run twice, once per list). patch_tokens returns
            # a list's layers in block order, each once: so are they picked here.
            union = sorted(set(config.layers) | set(config.few_shot_layers))
            outputs, pooled = self.backbone.patch_tokens(images, union)
            by_layer = dict(zip(union, outputs))
            tokens = [by_layer[layer] for layer in sorted(set(config.layers))]
            query = [by_layer[layer] for layer in sorted(set(config.few_shot_layers))]
        else:
            tokens, pooled = self.backbone.patch_tokens(images, config.layers)
        text = self._text_embeddings(list(class_names))
        image_embedding = F.normalize(pooled, dim=-1)
        scores = torch.softmax(100.0 * torch.bmm(image_embedding[:, None], text.transpose(1, 2))[:, 0], dim=-1)[:, 1]
        maps = sum(torch.softmax(upsample_patch_logits(logits, size), dim=1)[:, 1]
                   for logits in self._layer_logits(tokens, text))
        if self.few_shot:
            for layer_tokens, bank in zip(query, self.memory):
                distance = 1.0 - (F.normalize(layer_tokens, dim=-1) @ bank.T).max(dim=-1).values  # [B, N]
                maps = maps + upsample_patch_logits(distance[..., None], size)[:, 0]
        maps = gaussian_smooth(maps, config.gaussian_sigma)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    def finalize_scores(self, image_scores, anomaly_maps, class_names):
        """Few-shot: 0.5 · (text probability + per-class min-max normalized map maximum), as its test.py."""
        if not self.few_shot:
            return image_scores
        fused = np.array(image_scores, dtype=np.float64)
        maxima = anomaly_maps.reshape(len(anomaly_maps), -1).max(axis=1)
        names = np.asarray(class_names)
        for name in np.unique(names):
            rows = names == name
            low, high = maxima[rows].min(), maxima[rows].max()
            normalized = (maxima[rows] - low) / (high - low) if high > low else np.zeros(rows.sum())
            fused[rows] = 0.5 * (fused[rows] + normalized)
        return fused

    # -- checkpoints --------------------------------------------------------------------------

    def load_official_checkpoint(self, path: str | Path, trained_categories: Sequence[str] = ()) -> "AprilGANDetector":
        """Load the authors' released ``{'trainable_linearlayer': {fc.i.weight, fc.i.bias}}`` file."""
        payload = read_checkpoint(path)
        if not isinstance(payload, dict) or "trainable_linearlayer" not in payload:
            raise CheckpointError(f"{path} has no 'trainable_linearlayer' entry; expected an APRIL-GAN checkpoint")
        state_dict = {}
        for key, value in payload["trainable_linearlayer"].items():
            if not key.startswith("fc."):
                raise CheckpointError(f"unexpected key {key!r} in {path}; expected fc.<i>.weight / fc.<i>.bias")
            state_dict[key[len("fc."):]] = value
        check_state_dict(self.projections.state_dict(), state_dict, str(path))
        self.projections.load_state_dict(state_dict)
        self.trained_categories = list(trained_categories)
        return self


__all__ = ["AprilGANConfig", "AprilGANDetector", "ZeroShotViolation"]
