"""timm ResNets as frozen feature extractors: the ImageNet WideResNet-50 of PatchCore, PaDiM and SPADE.

The classic full-/few-shot baselines of the papers' tables (PatchCore, PaDiM, SPADE) read the
feature maps of a ResNet's stages: ``layer1`` .. ``layer4`` (stride 4, 8, 16, 32), numbered 1..4
here as the papers and their code name them. :func:`build_cnn_backbone` builds the timm model
(``wide_resnet50_2``; a random-init ``resnet18`` of the same family in smoke runs takes the same
code path) and loads

* a timm pretrained tag through the Hugging Face cache (``"tv_in1k"``: torchvision's ImageNet
  weights, the ones the PatchCore / PaDiM / SPADE code bases load with ``pretrained=True``), or
* a local state dict: timm's ResNet keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ... ``fc``), so ``torchvision.models.wide_resnet50_2(weights=...).state_dict()`` saved with
  ``torch.save`` loads strictly, every tensor checked.

Images are normalized with the weights' ImageNet mean/std and fed at ``image_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..seeding import seeded
from .frozen import BackboneError, FrozenEncoder
from .timm_vit import check_pretrained, is_checkpoint_path, load_timm_checkpoint, timm_module

RESNET_MODULE = "timm.models.resnet"
STAGES = (1, 2, 3, 4)  # layer1..layer4; timm's feature index 0 is the stem (act1)


@dataclass(frozen=True)
class CNNSpec:
    """Which CNN to build: timm architecture, weights (None / tag / local file), input size."""

    model_name: str
    pretrained: str | None
    image_size: int


def check_cnn_architecture(model_name: str) -> None:
    """Fail unless ``model_name`` is a timm ResNet-family architecture (ResNet, WideResNet, ResNeXt)."""
    module = timm_module(model_name, "wide_resnet50_2, resnet18")
    if module != RESNET_MODULE:
        raise BackboneError(f"{model_name} is a {module} model; the CNN baselines read ResNet stages "
                            f"layer1..layer4 ({RESNET_MODULE}: resnet18, wide_resnet50_2, ...)")


class CNNBackbone(FrozenEncoder):
    """A frozen timm ResNet whose stage outputs (layer1..layer4, 1-based) are the features.

    ``image_size``, ``mean`` and ``std`` are what :meth:`ImageTransform.for_backbone` reads.
    ``channels[stage]`` and ``reductions[stage]`` give each stage's width and stride.
    """

    def __init__(self, model: nn.Module, spec: CNNSpec):
        super().__init__()
        self.freeze(model)
        self.spec = spec
        self.image_size = int(spec.image_size)
        self.num_layers = len(STAGES)
        info = model.feature_info
        self.channels = {stage: int(info[stage]["num_chs"]) for stage in STAGES}
        self.reductions = {stage: int(info[stage]["reduction"]) for stage in STAGES}
        self.patch_size = self.reductions[1]  # the finest grid (layer1); FrozenEncoder.grid_size uses it
        if self.image_size % self.reductions[4]:
            raise BackboneError(f"{spec.model_name}'s deepest stage has stride {self.reductions[4]}: image_size "
                                f"must be a multiple of it, got {self.image_size}")
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std = tuple(float(v) for v in pretrained_cfg.get("std", IMAGENET_DEFAULT_STD))

    def grid(self, stage: int) -> int:
        """Side of ``stage``'s feature map at this resolution."""
        return self.image_size // self.reductions[stage]

    def stage_features(self, images: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
        """images [B, 3, S, S] normalized -> per stage (in the order asked) [B, C_stage, S/r, S/r]."""
        self.check_images(images)
        indices = self.layer_indices(stages)  # 1-based stage -> 0-based; an unknown stage fails here
        taken = sorted({i + 1 for i in indices})  # timm's feature index of layer<k> is k
        with torch.no_grad():
            outputs = self.model.forward_intermediates(images, indices=taken, intermediates_only=True,
                                                       stop_early=True)
        by_stage = dict(zip(taken, outputs))
        return [by_stage[int(stage)] for stage in stages]

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, C_4]: global average of layer4, the image feature SPADE retrieves with."""
        return self.stage_features(images, (4,))[0].mean(dim=(2, 3))

    def protocol(self) -> dict[str, str]:
        return {"cnn_weights": self.spec.pretrained or "random init"}


def build_cnn_backbone(model_name: str = "wide_resnet50_2", pretrained: str | None = "tv_in1k",
                       image_size: int = 224, device: str | torch.device = "cpu", init_seed: int = 0) -> CNNBackbone:
    """Build a frozen timm ResNet.

    Args:
        model_name: a timm ResNet-family architecture (``wide_resnet50_2``, ``resnet18``).
        pretrained: None (random init, seeded with ``init_seed``), a local checkpoint file (a plain
            state dict with torchvision/timm ResNet keys, classifier included, loaded strictly), or a
            timm pretrained tag (``"tv_in1k"``; read from the HF cache, downloaded only when online).
        image_size: the input resolution, a multiple of the deepest stage's stride (32).
        init_seed: seeds the random initialisation; the caller's RNG state is left untouched.
    """
    check_cnn_architecture(model_name)
    check_pretrained(model_name, pretrained)
    local_file = pretrained is not None and is_checkpoint_path(pretrained)
    spec = CNNSpec(model_name, pretrained, int(image_size))
    with seeded(init_seed):
        if pretrained is None or local_file:
            model = timm.create_model(model_name, pretrained=False)
        else:
            try:
                model = timm.create_model(f"{model_name}.{pretrained}", pretrained=True)
            except Exception as exc:  # timm/HF raise many types when the weights are not reachable
                raise BackboneError(
                    f"could not load {model_name}.{pretrained} weights: {str(exc).rstrip('.')}. On a machine "
                    "without network, put the weights in the HF cache first or pass a local checkpoint path "
                    "(torch.save(torchvision.models.wide_resnet50_2(weights='IMAGENET1K_V1').state_dict(), "
                    "'wrn50.pth')).") from None
    if local_file:
        load_timm_checkpoint(model, pretrained)
    return CNNBackbone(model, spec).to(device)

