"""Frozen encoders and how to look inside them."""
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

__all__ = ["TINY_MODELS", "Architecture", "BackboneError", "CheckpointError", "ClipBackbone", "ClipSpec",
           "architecture", "build_clip", "check_state_dict", "load_clip_checkpoint"]
