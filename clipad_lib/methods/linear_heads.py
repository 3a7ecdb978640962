"""DINOv2 and SAM with learnable linear heads, trained on auxiliary data as AdaCLIP re-runs them.

AdaCLIP (Cao et al., ECCV 2024, arXiv:2407.15795), supplementary §3, evaluates two vision-only
foundation models for zero-shot anomaly detection "by training on auxiliary data like AdaCLIP":
a frozen backbone, patch embeddings of several transformer layers ("multi-hierarchy patch
embeddings"), "additional learnable projection layers" after them, and AdaCLIP's training set and
losses. The numbers appear in AdaCLIP Tab. 1-2 and supp. Tab. 9-14 as the rows "DINOv2" and "SAM".

* DINOv2 (Oquab et al., arXiv:2304.07193): ViT-S/14, layers 3, 6, 9, 12
  (``vit_small_patch14_dinov2``, timm tag ``lvd142m``);
* SAM (Kirillov et al., ICCV 2023, arXiv:2304.02643): the ViT-L image encoder only — no prompt
  encoder, no mask decoder, and the encoder's neck is not used — layers 6, 12, 18, 24
  (``samvit_large_patch16``, timm tag ``sa1b``).

Pipeline: per layer ``Linear(C, 2)`` on the raw block outputs (no final norm, as APRIL-GAN takes
CLIP's intermediate tokens without ``ln_post``; the paper says nothing) -> patch logits, upsampled bilinearly (align_corners, as
:func:`~clipad_lib.methods.base.upsample_patch_logits`) -> softmax -> abnormal probability; the map
is the *mean* of the layers' probabilities (APRIL-GAN sums them: the same ranking, so the same
AUROC/AUPRO, but the mean stays a probability in [0, 1]), smoothed with σ = 4; the image score is
the maximum of the smoothed map (these models have no text side, so there is no image-text score).

What the supplement does not say, and what this module chooses (each default below names its source):

* AdaCLIP's loss also has an image-level focal term on its image-text probability; with no text
  side there is no such probability, so only the pixel terms remain: per layer focal + dice on the
  abnormal channel + dice on the normal channel against ``1 − mask`` (AdaCLIP's official trainer;
  ``normal_dice=False`` gives APRIL-GAN's focal + abnormal dice);
* the resolution of SAM: AdaCLIP resizes to 518 (§5.1), which is not a multiple of SAM's 16 px
  patch; 512 is used (see ``SAMLinearHeadsConfig.image_size``).

Backbones are timm models (:mod:`clipad_lib.backbones.timm_vit`), frozen, at ``image_size``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..backbones.timm_vit import (BackboneError, TimmBackbone, TimmSpec, build_timm_backbone, check_pretrained,
                                  timm_architecture, timm_family, timm_spec)
from ..data.auxiliary import AuxiliaryTrainingSet, ZeroShotViolation, auxiliary_datasets, check_zero_shot
from ..data.transforms import ImageTransform
from ..losses import dice_loss, focal_loss
from ..seeding import seeded
from ..training import train_epochs
from ..validation import Each, Interval, Options, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, LAYERS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY,
                   SMOOTHING_BOUNDARIES, Detector, FitData, Prediction, gaussian_smooth, upsample_patch_logits)
from .registry import register_method

IMAGE_SCORES = ("max",)
OPTIMIZERS = ("adamw", "adam")


# -- the method ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearHeadsConfig(ValidatedConfig):
    """DINOv2's settings by default (:class:`SAMLinearHeadsConfig` has SAM's)."""

    backbone: str = "vit_small_patch14_dinov2"   # supp. §3: DINOv2 ViT-S/14
    pretrained: str | None = "lvd142m"           # the DINOv2 release (LVD-142M), timm's tag for it
    # timm constructor overrides (the tiny smoke models); empty for the paper's models.
    backbone_kwargs: dict = field(default_factory=dict, hash=False)
    image_size: int = 518                        # AdaCLIP §5.1 resizes every image to 518 (= 37 x 14, DINOv2's native)
    layers: tuple[int, ...] = (3, 6, 9, 12)      # supp. §3
    # Supp. §3 trains "like AdaCLIP" with its losses: AdaCLIP's official trainer adds dice(normal, 1 - mask)
    # per layer; False = APRIL-GAN's focal + abnormal dice. (AdaCLIP's image-level focal term needs its
    # image-text probability, which these models do not have.)
    normal_dice: bool = True
    optimizer: str = "adamw"                     # AdaCLIP official trainer (AdamW, torch's weight decay 0.01)
    epochs: int = 5                              # AdaCLIP official train.py
    # Supp. §3 is silent; AdaCLIP's own 0.01 (official train.py) trains prompts. 1e-3 is APRIL-GAN's
    # train.py rate for the same kind of per-layer linear heads on frozen tokens.
    learning_rate: float = 0.001
    betas: tuple[float, float] = (0.5, 0.999)    # AdaCLIP official trainer and APRIL-GAN train.py alike
    # Silent in the papers; our choice. AdaCLIP's official 1 is forced by its per-image text prompts and
    # APRIL-GAN's 64 (train.sh) is memory-bound at 518 px on ViT-L; heads on frozen tokens run at any size.
    batch_size: int = 8
    mosaic_prob: float = 0.0                     # AdaCLIP's official data path uses no mosaic (APRIL-GAN: 0.2)
    gaussian_sigma: float = 4.0                  # AdaCLIP official test code (gaussian_filter, sigma=4)
    smoothing_boundary: str = "reflect"          # AdaCLIP official: scipy's gaussian_filter default
    image_score: str = "max"                     # max of the smoothed map (no text side; AdaCLIP Tab. 4 "w/o HSF")
    device: str = "cpu"
    seed: int = 0                                # the papers give none; AdaCLIPConfig's default here

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "backbone_kwargs": [dict], "layers": [LAYERS], "normal_dice": [bool],
        "optimizer": [Options(OPTIMIZERS)], "epochs": [POSITIVE_INT], "learning_rate": [POSITIVE],
        "betas": [Each(Interval(float, 0, 1, closed="left"), length=2)], "batch_size": [POSITIVE_INT],
        "mosaic_prob": [PROBABILITY], "gaussian_sigma": [NON_NEGATIVE],
        "smoothing_boundary": [Options(SMOOTHING_BOUNDARIES)], "image_score": [Options(IMAGE_SCORES)],
        "seed": [int],
    }

    def __post_init__(self):
        if isinstance(self.backbone_kwargs, Mapping):  # a private copy: configs share nothing mutable
            object.__setattr__(self, "backbone_kwargs", {
                k: tuple(v) if isinstance(v, list) else v for k, v in self.backbone_kwargs.items()})
        super().__post_init__()

    def check(self):
        try:
            timm_family(self.backbone)
        except BackboneError as exc:
            self.fail("backbone", str(exc))
        try:
            architecture = timm_architecture(self.backbone, self.backbone_kwargs)
        except BackboneError as exc:
            self.fail("backbone_kwargs", str(exc))
        patch = architecture.patch_size
        if self.image_size % patch:
            nearest = sorted({max(patch, self.image_size // patch * patch), (self.image_size // patch + 1) * patch})
            self.fail("image_size", f"{self.backbone} has {patch} px patches, so image_size must be a multiple of "
                                    f"{patch} (e.g. {' or '.join(map(str, nearest))})")
        if max(self.layers) > architecture.layers:
            self.fail("layers", f"{self.backbone} has layers 1..{architecture.layers} (1-based)")
        try:
            check_pretrained(self.backbone, self.pretrained)
        except BackboneError as exc:
            self.fail("pretrained", str(exc))

    def backbone_spec(self) -> TimmSpec:
        """The :class:`TimmSpec` a backbone built from this config has (a shared one must match)."""
        return timm_spec(self.backbone, self.pretrained, self.image_size, self.backbone_kwargs)


@dataclass(frozen=True)
class SAMLinearHeadsConfig(LinearHeadsConfig):
    backbone: str = "samvit_large_patch16"       # supp. §3: SAM ViT-L, the image encoder only
    pretrained: str | None = "sa1b"              # the SAM release (SA-1B), timm's tag for it
    # Supp. §3 is silent. AdaCLIP's 518 (§5.1) is not a multiple of SAM's 16 px patch; 512 is the nearest
    # multiple below it, so maps are scored at nearly the resolution of every other row of Tab. 1-2.
    # (SAM's native 1024 would quadruple the pixels scored; its position embeddings are resampled 64 -> 32.)
    image_size: int = 512
    layers: tuple[int, ...] = (6, 12, 18, 24)    # supp. §3


class LinearHeadsDetector(Detector):
    """A frozen timm backbone and one ``Linear(C, 2)`` head per layer, trained on auxiliary data.

    Not registered itself: :class:`DINOv2LinearHeads` ("dinov2") and :class:`SAMLinearHeads` ("sam")
    are, each with its own defaults. ``fit(FitData(auxiliary=...))`` trains the heads; ``predict``
    is zero-shot (a category seen in training is refused).
    """

    name = "linear_heads"
    config_class: ClassVar[type] = LinearHeadsConfig
    display: ClassVar[str] = "linear heads"

    def __init__(self, config: LinearHeadsConfig | None = None, backbone: TimmBackbone | None = None):
        config = config if config is not None else self.config_class()
        if not isinstance(config, LinearHeadsConfig):
            raise TypeError(f"{type(self).__name__} takes a LinearHeadsConfig, got {type(config).__name__}")
        self.config = config
        if backbone is None:
            backbone = build_timm_backbone(config.backbone, config.pretrained, config.image_size, config.device,
                                           config.backbone_kwargs)
        elif getattr(backbone, "spec", None) != config.backbone_spec():
            raise BackboneError(f"the shared backbone {getattr(backbone, 'spec', backbone)} does not match the "
                                f"config's {config.backbone_spec()}")
        self.backbone = backbone
        self.backbone.layer_indices(config.layers)  # an unknown layer fails here, naming the valid range
        with seeded(config.seed):  # the heads' initialisation, without touching the caller's RNG
            self.heads = nn.ModuleList(nn.Linear(backbone.width, 2) for _ in config.layers).to(config.device)
        self.heads.eval()
        self._transform = ImageTransform.for_backbone(self.backbone)
        self.trained_categories: list[str] = []
        self.loss_history: list[float] = []

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    def _layer_probabilities(self, tokens: list[torch.Tensor], size: int) -> list[torch.Tensor]:
        """Per layer [B, 2, size, size]: softmax of the head's patch logits upsampled to the input."""
        return [torch.softmax(upsample_patch_logits(head(t), size), dim=1) for head, t in zip(self.heads, tokens)]

    # -- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict) -> torch.Tensor:
        """Per layer focal + dice(abnormal) [+ dice(normal, 1 - mask)], summed over layers."""
        config = self.config
        images, masks = batch["image"].to(config.device), batch["mask"].to(config.device)
        with torch.no_grad():
            tokens = self.backbone.patch_tokens(images, config.layers)
        loss = images.new_zeros(())
        for probabilities in self._layer_probabilities(tokens, images.shape[-1]):
            loss = loss + focal_loss(probabilities, masks) + dice_loss(probabilities[:, 1], masks)
            if config.normal_dice:
                loss = loss + dice_loss(probabilities[:, 0], 1 - masks)
        return loss

    def fit(self, data: FitData) -> "LinearHeadsDetector":
        """Train the heads on ``data.auxiliary`` (an AnomalyDataset or a list of them).

        ``loss_history`` keeps the mean loss of every epoch; ``trained_categories`` what was seen.
        """
        datasets = auxiliary_datasets(data.auxiliary, type(self).__name__)
        config = self.config
        optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        start = time.perf_counter()
        with seeded(config.seed):
            training_set = AuxiliaryTrainingSet(datasets, self.transform, config.mosaic_prob, config.seed)
            optimizer = optimizer_class(self.heads.parameters(), lr=config.learning_rate, betas=config.betas)
            self.heads.train()
            try:
                self.loss_history = train_epochs(self._loss, optimizer, training_set, epochs=config.epochs,
                                                 batch_size=config.batch_size, seed=config.seed, desc=self.display)
            finally:
                self.heads.eval()
        self.trained_categories = training_set.categories
        self.fit_seconds = time.perf_counter() - start
        return self

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def patch_embeddings(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """The frozen backbone's patch tokens the heads read (AdaCLIP Fig. 7): images [B, 3, S, S]
        -> {1-based layer: [B, N, C]} on the CPU, for the configured layers."""
        tokens = self.backbone.patch_tokens(images.to(self.config.device), self.config.layers)
        return {layer: t.float().cpu() for layer, t in zip(self.config.layers, tokens)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] -> scores [B] (max of the map) and maps [B, S, S].

        ``class_names`` feed no prompt (there is no text side); given, they are checked against the
        training categories, so a zero-shot run cannot score a category it trained on.
        """
        if class_names is not None:
            if len(class_names) != len(images):
                raise ValueError(f"got {len(class_names)} class names for {len(images)} images")
            try:
                check_zero_shot(self.trained_categories, class_names)
            except ZeroShotViolation as exc:
                raise ZeroShotViolation(f"refusing to predict: {exc}") from None
        config = self.config
        images = images.to(config.device)
        tokens = self.backbone.patch_tokens(images, config.layers)
        probabilities = self._layer_probabilities(tokens, images.shape[-1])
        maps = torch.stack([p[:, 1] for p in probabilities]).mean(dim=0)
        maps = gaussian_smooth(maps, config.gaussian_sigma, config.smoothing_boundary)
        scores = maps.flatten(1).max(dim=1).values
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())


_ADACLIP_RERUN = "as re-run by AdaCLIP (Cao et al., ECCV 2024, arXiv:2407.15795) supp. §3"


@register_method("dinov2", display_name="DINOv2", config=LinearHeadsConfig, fits_on=("auxiliary",),
                 paper="Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, arXiv:2304.07193; "
                       f"ViT-S/14 with linear heads trained on auxiliary data, {_ADACLIP_RERUN}",
                 smoke_changes={"pretrained": None, "image_size": 56, "layers": (1, 2, 3, 4),
                                "backbone_kwargs": {"img_size": 56, "depth": 4, "embed_dim": 64, "num_heads": 2},
                                "epochs": 1, "batch_size": 4})
class DINOv2LinearHeads(LinearHeadsDetector):
    """DINOv2 ViT-S/14, layers 3, 6, 9, 12 (AdaCLIP supp. §3)."""

    name = "dinov2"
    config_class = LinearHeadsConfig
    display = "DINOv2"


@register_method("sam", display_name="SAM", config=SAMLinearHeadsConfig, fits_on=("auxiliary",),
                 paper="Kirillov et al., Segment Anything, ICCV 2023, arXiv:2304.02643; the ViT-L image encoder with "
                       f"linear heads trained on auxiliary data, {_ADACLIP_RERUN}",
                 smoke_changes={"backbone": "samvit_base_patch16", "pretrained": None, "image_size": 64,
                                "layers": (1, 2, 3, 4),
                                "backbone_kwargs": {"img_size": 64, "depth": 4, "embed_dim": 64, "num_heads": 2,
                                                    "global_attn_indexes": (1, 3), "window_size": 2},
                                "epochs": 1, "batch_size": 4})
class SAMLinearHeads(LinearHeadsDetector):
    """SAM's ViT-L image encoder, layers 6, 12, 18, 24 (AdaCLIP supp. §3)."""

    name = "sam"
    config_class = SAMLinearHeadsConfig
    display = "SAM"


__all__ = ["DINOv2LinearHeads", "LinearHeadsConfig", "LinearHeadsDetector", "SAMLinearHeads", "SAMLinearHeadsConfig"]
