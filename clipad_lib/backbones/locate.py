"""Where a backbone's weights would be read from, without loading or downloading them.

``clipad check`` asks this before GPU time is spent: for an open_clip CLIP or a timm model and a
``pretrained`` value (None, a shipped tag, a local file, a pretrained tag), is the file on disk?
Tags are looked up where open_clip and timm themselves look: the Hugging Face cache for a tag
with a hub entry (``CLIPAD_WEIGHTS`` as open_clip's cache when set), else the URL download cache
(open_clip's ``~/.cache/clip``, torch hub's ``checkpoints/``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import timm
import torch

from .. import paths
from .clip import SHIPPED_WEIGHTS
from .timm_vit import CHECKPOINT_SUFFIXES

HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")   # open_clip's hub files
TIMM_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")                   # timm's hub files


@dataclass(frozen=True)
class WeightsLocation:
    model: str
    pretrained: str | None
    found: bool
    where: str       # the file, "random init", or where it was looked for
    hint: str = ""   # what to do when it is missing

    @property
    def label(self) -> str:
        return f"{self.model}/{self.pretrained}" if self.pretrained else f"{self.model} (random init)"

    def line(self) -> str:
        return f"{self.label}: {self.where}" + (f" — {self.hint}" if not self.found and self.hint else "")


def _hf_cached(repo_id: str, filenames, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def _is_local_file(pretrained: str) -> bool:
    return pretrained.lower().endswith(CHECKPOINT_SUFFIXES) or os.sep in pretrained or Path(pretrained).is_file()


def locate_clip_weights(model_name: str, pretrained: str | None, cache_dir: str | Path | None = None
                        ) -> WeightsLocation:
    """Where :func:`clipad_lib.backbones.build_clip` would read ``pretrained`` from."""
    if pretrained is None:
        return WeightsLocation(model_name, None, True, "random init (nothing to load)")
    shipped = SHIPPED_WEIGHTS.get((model_name, pretrained))
    if shipped is not None:
        return WeightsLocation(model_name, pretrained, shipped.is_file(), f"shipped with clipad ({shipped.name})",
                               "reinstall the package or remake it with scripts/pretrain_tiny_clip.py")
    if _is_local_file(pretrained):
        path = Path(pretrained).expanduser()
        return WeightsLocation(model_name, pretrained, path.is_file(), str(path),
                               "no such file: pass an existing checkpoint path")
    if pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        return WeightsLocation(model_name, pretrained, False, "not a pretrained tag of this architecture",
                               f"its tags: {tags}")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    cache = str(cache_dir or paths.weights_dir() or "") or None
    looked = []
    if cfg.get("hf_hub"):
        hub = cfg["hf_hub"]  # "org/model/" (open_clip's default file names) or "org/model/file"
        if hub.endswith("/"):
            repo_id, names = hub.rstrip("/"), HF_WEIGHT_FILES
        else:
            repo_id, filename = os.path.split(hub)
            names = (str(Path(filename).with_suffix(".safetensors")), filename)
        found = _hf_cached(repo_id, names, cache)
        if found:
            return WeightsLocation(model_name, pretrained, True, found)
        looked.append(f"the Hugging Face cache ({repo_id}{' in ' + cache if cache else ''})")
    elif cfg.get("url"):  # open_clip reads the hub when a tag has a hub entry, the URL only otherwise
        folder = Path(cache) if cache else Path.home() / ".cache" / "clip"
        target = folder / os.path.basename(cfg["url"])
        if target.is_file():
            return WeightsLocation(model_name, pretrained, True, str(target))
        looked.append(str(target))
    return WeightsLocation(model_name, pretrained, False, "not downloaded (looked in " + " and ".join(looked) + ")",
                           "on a machine with network run once: python -c \"import open_clip; open_clip."
                           f"create_model('{model_name}', pretrained='{pretrained}'"
                           + (f", cache_dir='{cache}'" if cache else "") + ")\", or pass a local checkpoint path")


def locate_timm_weights(model_name: str, pretrained: str | None) -> WeightsLocation:
    """Where the timm backbones (DINOv2, SAM, the ResNets) would read ``pretrained`` from."""
    if pretrained is None:
        return WeightsLocation(model_name, None, True, "random init (nothing to load)")
    if _is_local_file(pretrained):
        path = Path(pretrained).expanduser()
        return WeightsLocation(model_name, pretrained, path.is_file(), str(path),
                               "no such file: pass an existing checkpoint path")
    name = f"{model_name}.{pretrained}"
    if name not in timm.list_pretrained(name):
        tags = ", ".join(n.split(".", 1)[1] for n in timm.list_pretrained(f"{model_name}.*")) or "none"
        return WeightsLocation(model_name, pretrained, False, "not a timm pretrained tag of this architecture",
                               f"its tags: {tags}")
    cfg = timm.models.get_pretrained_cfg(name)
    looked = []
    if cfg.hf_hub_id:
        found = _hf_cached(cfg.hf_hub_id, TIMM_HF_WEIGHT_FILES, None)
        if found:
            return WeightsLocation(model_name, pretrained, True, found)
        looked.append(f"the Hugging Face cache ({cfg.hf_hub_id})")
    elif cfg.url:  # timm, too, prefers the hub entry
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if target.is_file():
            return WeightsLocation(model_name, pretrained, True, str(target))
        looked.append(str(target))
    return WeightsLocation(model_name, pretrained, False, "not downloaded (looked in " + " and ".join(looked) + ")",
                           f"on a machine with network run once: python -c \"import timm; timm.create_model("
                           f"'{name}', pretrained=True)\", or pass a local checkpoint path")


def locate_weights(model_name: str, pretrained: str | None) -> WeightsLocation:
    """Either family, by the architecture's name (an open_clip model or a timm one)."""
    if model_name in open_clip.list_models():
        return locate_clip_weights(model_name, pretrained)
    if timm.is_model(model_name):
        return locate_timm_weights(model_name, pretrained)
    return WeightsLocation(model_name, pretrained, False, "unknown architecture",
                           "neither open_clip.list_models() nor timm.list_models() has it")
