"""What PatchCore, PaDiM and SPADE share: an ImageNet CNN, its transform, and how maps become pixels.

Each keeps its own module (:mod:`.patchcore`, :mod:`.padim`, :mod:`.spade`); this base builds the
frozen timm ResNet from the config's ``backbone`` / ``pretrained`` / ``image_size`` / ``device`` (or
takes a shared one), checks that ``fit`` got normal references, and turns a coarse score map into
the anomaly map the PatchCore and PaDiM codes produce: bilinear upsampling (``align_corners=False``)
to the input size, then ``scipy.ndimage.gaussian_filter`` with sigma 4 (edge repeated). SPADE, which
has no official code, averages its per-stage maps after upsampling and then smooths the same way.

Input preprocessing differs from the official codes in one way, for every method here: they resize
to 256 and centre-crop 224 (masks too), which drops a 16 px border where defects can lie; this
workbook resizes the whole image to ``image_size`` (224), as it does for every method, so all
methods of a table see the same pixels.
"""
from __future__ import annotations

import torch

from ..backbones.timm_cnn import CNNBackbone, build_cnn_backbone
from ..data.transforms import ImageTransform
from ..validation import Interval, Options
from .base import NON_NEGATIVE, POSITIVE_INT, SMOOTHING_BOUNDARIES, Detector, FitData, gaussian_smooth, upsample_maps

STAGE = Interval(int, 1, 4)
# The fields every CNN baseline's config has.
CNN_CONSTRAINTS = {"backbone": [str], "pretrained": [str, None], "image_size": [Interval(int, 32, None)],
                   "device": [str], "gaussian_sigma": [NON_NEGATIVE],
                   "smoothing_boundary": [Options(SMOOTHING_BOUNDARIES)], "batch_size": [POSITIVE_INT]}
# Config changes that run a CNN baseline on a small random-init ResNet in seconds (unit tests).
CNN_SMOKE_CHANGES = {"backbone": "resnet18", "pretrained": None, "image_size": 64}


class CNNDetector(Detector):
    """Base of the CNN baselines: ``backbone`` (a :class:`CNNBackbone`) shares an encoder already built."""

    def __init__(self, config, backbone: CNNBackbone | None = None):
        self.config = config
        if backbone is not None and (backbone.spec.model_name, backbone.image_size) != (config.backbone,
                                                                                        config.image_size):
            raise ValueError(f"the shared backbone is {backbone.spec.model_name} at {backbone.image_size} px but the "
                             f"config asks for {config.backbone} at {config.image_size} px")
        self.backbone = backbone or build_cnn_backbone(config.backbone, config.pretrained, config.image_size,
                                                       config.device)
        self._transform = ImageTransform.for_backbone(self.backbone)

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    def _references(self, data: FitData) -> torch.Tensor:
        """The [K, 3, S, S] normal references of ``data``, on the config's device; fails without them."""
        if data.reference_images is None or len(data.reference_images) == 0:
            raise ValueError(f"{type(self).__name__}.fit needs FitData(reference_images=[K, 3, S, S]) with K >= 1 "
                             "normal images")
        return data.reference_images.to(self.config.device)

    def _batches(self, images: torch.Tensor):
        for start in range(0, len(images), self.config.batch_size):
            yield images[start:start + self.config.batch_size]

    def _pixel_map(self, coarse: torch.Tensor, size: int) -> torch.Tensor:
        """[B, h, w] score map -> [B, size, size]: bilinear upsampling, then Gaussian smoothing."""
        return gaussian_smooth(upsample_maps(coarse, size), self.config.gaussian_sigma, self.config.smoothing_boundary)

    def _require_fit(self, fitted: bool) -> None:
        if not fitted:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit(FitData(reference_images=...))")
