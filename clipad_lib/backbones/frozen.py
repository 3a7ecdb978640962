"""What every frozen encoder of this package shares: frozen weights in eval mode, its patch grid,
input checks, 1-based layer numbers and a weights fingerprint (cache keys of frozen features)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..feature_cache import module_fingerprint


class BackboneError(ValueError):
    """A backbone that cannot be built or used as asked (unknown architecture, bad size or layer)."""


class FrozenEncoder(nn.Module):
    """Base of :class:`~clipad_lib.backbones.ClipBackbone` and :class:`~clipad_lib.backbones.TimmBackbone`.

    Subclasses set ``model``, ``spec`` (with ``model_name``), ``image_size``, ``patch_size`` and
    ``num_layers``; ``freeze(model)`` keeps the model in eval mode with no gradients.
    """

    def freeze(self, model: nn.Module) -> nn.Module:
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self._weights_fingerprint: str | None = None
        return self.model

    def train(self, mode: bool = True):  # the backbone stays in eval mode (no dropout, no drop path)
        return super().train(False)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def check_images(self, images: torch.Tensor) -> None:
        """Fail unless ``images`` is [B, 3, S, S] at this backbone's resolution S."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise BackboneError(
                f"{self.spec.model_name} takes {self.image_size}x{self.image_size} images, got "
                f"{images.shape[-1]}x{images.shape[-2]}; resize with the backbone's transform first"
            )

    def layer_indices(self, layers: Sequence[int]) -> list[int]:
        """1-based layer numbers (as the papers write them) -> 0-based block indices; an unknown
        layer fails naming the valid range."""
        bad = [layer for layer in layers if not 1 <= int(layer) <= self.num_layers]
        if bad:
            raise BackboneError(
                f"layer indices {bad} do not exist: {self.spec.model_name} has layers 1..{self.num_layers} (1-based)"
            )
        return [int(layer) - 1 for layer in layers]

    def weights_fingerprint(self) -> str:
        """A digest of every weight and buffer, computed once (cache keys of frozen features)."""
        if self._weights_fingerprint is None:
            self._weights_fingerprint = module_fingerprint(self.model)
        return self._weights_fingerprint
