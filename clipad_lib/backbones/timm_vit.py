"""timm vision transformers as frozen encoders: DINOv2 ViTs and SAM's image encoder.

:func:`build_timm_backbone` builds a timm model at its own (native) resolution, so a pretrained
tag (timm's, through the Hugging Face cache) or a local state dict loads without any resize, and
feeds it ``image_size`` inputs — ViTs with ``dynamic_img_size=True``, SAM's encoder always — so timm
resamples the absolute position embedding at run time (bicubic, antialiased) when the two differ.
Random-init tiny models of the same family (``backbone_kwargs``) take the same path in smoke runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import model_entrypoint
from torch import nn

from .clip import CheckpointError, check_state_dict
from ..seeding import seeded
from .frozen import BackboneError, FrozenEncoder

# The timm model families this module drives (their forward_intermediates differ in output
# layout), by the module that defines the model, with the constructor arguments they need here.
FAMILIES = {
    "timm.models.vision_transformer": ("vit", {"dynamic_img_size": True}),
    "timm.models.vision_transformer_sam": ("sam", {}),
}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class TimmArchitecture:
    """What a timm ViT is, read from a model built on the meta device (no memory, no weights).

    family: "vit" or "sam"; layers: number of blocks; patch_size, native_image_size: pixels
    (the native size is the position-embedding grid times the patch); width: token channels.
    """

    name: str
    family: str
    layers: int
    patch_size: int
    native_image_size: int
    width: int


def _frozen(value: Any) -> Any:
    """A hashable copy (dicts and lists inside backbone_kwargs) for caching."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def timm_module(model_name: str, examples: str) -> str:
    """The timm module that defines ``model_name`` (an architecture without a pretrained tag);
    a tagged or unknown name fails, the latter listing ``examples``."""
    if "." in model_name:
        raise BackboneError(f"give the timm architecture without a tag ({model_name.split('.')[0]!r}) and the "
                            f"tag as pretrained ({model_name.split('.', 1)[1]!r})")
    if not timm.is_model(model_name):
        raise BackboneError(f"unknown timm model {model_name!r}; e.g. {examples} (timm.list_models() lists all)")
    return model_entrypoint(model_name).__module__


def timm_family(model_name: str) -> str:
    module = timm_module(model_name, "vit_small_patch14_dinov2, samvit_large_patch16")
    if module not in FAMILIES:
        raise BackboneError(f"{model_name} is a {module} model; linear heads support plain ViTs "
                            "(timm.models.vision_transformer, e.g. DINOv2) and SAM's image encoder "
                            "(timm.models.vision_transformer_sam)")
    return FAMILIES[module][0]


def _constructor_kwargs(model_name: str, backbone_kwargs: Mapping | None) -> dict:
    """timm constructor arguments: no classifier, the family's own, then the caller's overrides."""
    module = model_entrypoint(model_name).__module__
    return {"num_classes": 0, **FAMILIES[module][1], **dict(backbone_kwargs or {})}


def _describe(model_name: str, family: str, model: nn.Module) -> TimmArchitecture:
    patch = model.patch_embed.patch_size
    native = model.patch_embed.img_size
    return TimmArchitecture(model_name, family, len(model.blocks), int(patch[0]), int(native[0]), int(model.embed_dim))


_ARCHITECTURES: dict[tuple, TimmArchitecture] = {}


def timm_architecture(model_name: str, backbone_kwargs: Mapping | None = None) -> TimmArchitecture:
    """The :class:`TimmArchitecture` of ``model_name`` built with ``backbone_kwargs`` (cached);
    configs validate layers and image size with it before any weights exist."""
    key = (model_name, _frozen(dict(backbone_kwargs or {})))
    if key not in _ARCHITECTURES:
        family = timm_family(model_name)
        kwargs = _constructor_kwargs(model_name, backbone_kwargs)
        try:
            with torch.device("meta"):
                model = timm.create_model(model_name, pretrained=False, **kwargs)
        except Exception as exc:  # timm raises TypeError, AssertionError, ... for arguments that do not fit
            raise BackboneError(f"timm cannot build {model_name} with backbone_kwargs "
                                f"{dict(backbone_kwargs or {})}: {exc}") from None
        _ARCHITECTURES[key] = _describe(model_name, family, model)
    return _ARCHITECTURES[key]


def is_checkpoint_path(pretrained: str) -> bool:
    """A local checkpoint (by name: the file itself is checked when the backbone is built)."""
    return pretrained.lower().endswith(CHECKPOINT_SUFFIXES) or Path(pretrained).expanduser().is_file()


def pretrained_tags(model_name: str) -> list[str]:
    """timm's pretrained tags of ``model_name`` (``["lvd142m"]``), from timm's own tables (no network)."""
    return [name.split(".", 1)[1] for name in timm.list_pretrained(f"{model_name}.*")]


@dataclass(frozen=True)
class TimmSpec:
    """Which timm backbone to build (see :func:`build_timm_backbone`); kwargs as sorted pairs."""

    model_name: str
    pretrained: str | None
    image_size: int
    kwargs: tuple = ()


def load_timm_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a plain state dict (``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or
    ``.safetensors``) into a timm model, every tensor checked first: a missing, unexpected or wrongly
    shaped tensor is named. Keys are timm's (``timm.create_model(name, pretrained=True).state_dict()``)."""
    from .checkpoint_files import read_checkpoint

    path = Path(path).expanduser()
    state_dict = read_checkpoint(path)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} is not a plain state dict (tensor name -> tensor); save "
                              "model.state_dict() of the timm model itself")
    check_state_dict(model.state_dict(), state_dict, str(path))
    model.load_state_dict(state_dict, strict=True)


class TimmBackbone(FrozenEncoder):
    """A frozen timm ViT (DINOv2, SAM's image encoder) with the accessors the linear heads need.

    ``image_size``, ``mean`` and ``std`` are what :meth:`ImageTransform.for_backbone` reads; mean/std
    come from the model's ``pretrained_cfg`` (ImageNet's for DINOv2 and SAM). Layers are 1-based.
    """

    def __init__(self, model: nn.Module, spec: TimmSpec, architecture: TimmArchitecture):
        super().__init__()
        self.freeze(model)
        self.spec = spec
        self.architecture = architecture
        self.family = architecture.family
        self.num_layers = architecture.layers
        self.patch_size = architecture.patch_size
        self.native_image_size = architecture.native_image_size
        self.width = architecture.width
        self.image_size = int(spec.image_size)
        if self.image_size % self.patch_size:
            raise BackboneError(f"{spec.model_name} has {self.patch_size} px patches: image_size must be a multiple "
                                f"of {self.patch_size}, got {self.image_size}")
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std = tuple(float(v) for v in pretrained_cfg.get("std", IMAGENET_DEFAULT_STD))

    def patch_tokens(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Raw block outputs of the chosen layers (no final norm, no SAM neck, no prefix tokens).

        images [B, 3, S, S] normalized -> per layer (in the order asked) [B, N, C], N = (S / patch)^2
        in row-major order.
        """
        self.check_images(images)
        indices = self.layer_indices(layers)
        taken = sorted(set(indices))  # timm returns intermediates in block order
        if self.family == "vit":
            outputs = self.model.forward_intermediates(images, indices=taken, output_fmt="NLC",
                                                       intermediates_only=True, stop_early=True)
        else:  # SAM's encoder returns NCHW maps
            outputs = [o.flatten(2).transpose(1, 2)
                       for o in self.model.forward_intermediates(images, indices=taken, intermediates_only=True,
                                                                 stop_early=True)]
        by_index = dict(zip(taken, outputs))
        return [by_index[i] for i in indices]

    def protocol(self) -> dict[str, str]:
        """For run records: whether loaded position embeddings are resampled to ``image_size``."""
        resized = self.spec.pretrained is not None and self.image_size != self.native_image_size
        return {"pos_embed_resize": "bicubic, antialias (timm, at run time)" if resized else "none"}

def check_pretrained(model_name: str, pretrained: str | None) -> None:
    """Fail unless ``pretrained`` is None, a local checkpoint file or a timm tag of ``model_name``."""
    if pretrained is not None and not is_checkpoint_path(pretrained) and pretrained not in pretrained_tags(model_name):
        raise BackboneError(f"{pretrained!r} is neither a local checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) "
                            f"nor a timm pretrained tag of {model_name} (tags: "
                            f"{', '.join(pretrained_tags(model_name)) or 'none'})")


def timm_spec(model_name: str, pretrained: str | None, image_size: int,
              backbone_kwargs: Mapping | None = None) -> "TimmSpec":
    """The :class:`TimmSpec` of a backbone (hashable: kwargs frozen into sorted tuples)."""
    return TimmSpec(model_name, pretrained, int(image_size), _frozen(dict(backbone_kwargs or {})))


def build_timm_backbone(model_name: str, pretrained: str | None = None, image_size: int | None = None,
                        device: str | torch.device = "cpu", backbone_kwargs: Mapping | None = None,
                        init_seed: int = 0) -> TimmBackbone:
    """Build a frozen timm backbone.

    Args:
        model_name: a timm ViT or SAM architecture (``vit_small_patch14_dinov2``, ``samvit_large_patch16``).
        pretrained: None (random init, seeded with ``init_seed``), a local checkpoint file (a plain
            timm state dict, loaded strictly by :func:`load_timm_checkpoint`), or a timm pretrained
            tag (``"lvd142m"``, ``"sa1b"``: ``timm.create_model(f"{name}.{tag}", pretrained=True)``,
            which reads the HF cache and downloads only when the machine is online).
        image_size: the input resolution (None: the model's native one).
        backbone_kwargs: timm constructor overrides (``img_size``, ``depth``, ``embed_dim``, ...); the
            model is built at its native size, ``img_size`` changes that size.
        init_seed: seeds the random initialisation; the caller's RNG state is left untouched.
    """
    architecture = timm_architecture(model_name, backbone_kwargs)
    kwargs = _constructor_kwargs(model_name, backbone_kwargs)
    local_file = pretrained is not None and is_checkpoint_path(pretrained)
    check_pretrained(model_name, pretrained)
    spec = timm_spec(model_name, pretrained, int(image_size or architecture.native_image_size), backbone_kwargs)
    with seeded(init_seed):  # the random init (also run before pretrained weights load) moves no caller RNG
        if pretrained is None or local_file:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
        else:
            try:
                model = timm.create_model(f"{model_name}.{pretrained}", pretrained=True, **kwargs)
            except Exception as exc:
                raise BackboneError(
                    f"could not load {model_name}.{pretrained} weights: {str(exc).rstrip('.')}. On a machine "
                    "without network, put the weights in the HF cache first or pass a local checkpoint path.") from None
    if local_file:
        load_timm_checkpoint(model, pretrained)
    return TimmBackbone(model, spec, architecture).to(device)
