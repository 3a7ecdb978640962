"""Frozen encoders and how to look inside them: open_clip CLIPs (``clip``) and timm ViTs
(``timm_vit``: DINOv2, SAM's image encoder), both :class:`FrozenEncoder` s."""
from .clip import (
    TINY_MODELS,
    Architecture,
    BackboneError,
    CheckpointError,
    ClipBackbone,
    ClipSpec,
    architecture,
    build_clip,
    check_state_dict,
    load_clip_checkpoint,
)
from .frozen import FrozenEncoder
from .timm_vit import TimmBackbone, TimmSpec, build_timm_backbone, load_timm_checkpoint, timm_architecture

__all__ = ["FrozenEncoder", "TimmBackbone", "TimmSpec", "build_timm_backbone", "load_timm_checkpoint",
           "timm_architecture", "TINY_MODELS", "Architecture", "BackboneError", "CheckpointError", "ClipBackbone", "ClipSpec",
           "architecture", "build_clip", "check_state_dict", "load_clip_checkpoint"]
