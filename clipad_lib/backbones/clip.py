"""Frozen open_clip encoders and the accessors the methods need.

``build_clip`` makes a model from an open_clip architecture name and either a pretrained tag
(``"openai"``, ``"laion400m_e32"`` — fetched into the open_clip/HF cache on a GPU runner), a
local checkpoint file, or None for random initialisation (unit tests).
The ``clipad-tiny-*`` architectures in ``configs/`` are registered with open_clip on import:
they are small ViTs that run through exactly the same code as ``ViT-L-14-336``. One of them
ships with weights: ``clipad-tiny-ViT`` / ``"clipad-synthetic"``, pretrained here on a captioned
synthetic corpus (``weights/clipad-tiny-ViT-synthetic.md``), loaded like any local checkpoint;
the smoke profile uses it.

Layer indices are 1-based, as the papers write them ("the 6th, 12th, 18th and 24th layers").
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import open_clip
import torch
from open_clip.factory import load_state_dict as _open_clip_load_state_dict
from open_clip.model import resize_pos_embed, resize_text_pos_embed, set_model_preprocess_cfg
from torch import nn

from .. import paths
from .frozen import BackboneError, FrozenEncoder

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)
TINY_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))

# Weights shipped with the package, as (architecture, tag) -> file: the tiny CLIP pretrained on
# the captioned synthetic corpus (scripts/pretrain_tiny_clip.py; model card beside the file).
SHIPPED_WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_WEIGHTS = {("clipad-tiny-ViT", "clipad-synthetic"): SHIPPED_WEIGHTS_DIR / "clipad-tiny-ViT-synthetic.safetensors"}


@contextmanager
def _quiet_random_init():
    """open_clip warns at every random init; here random init is asked for on purpose."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class CheckpointError(BackboneError):
    """A checkpoint file does not fit the model it is loaded into."""


POS_EMBED_INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to build.

    model_name: open_clip architecture (``ViT-L-14-336``, ``ViT-B-16-plus-240``, ``clipad-tiny-ViT``).
    pretrained: pretrained tag, local checkpoint path, or None for random init.
    image_size: input resolution; positional embeddings are interpolated when it differs from
        the architecture's (AdaCLIP runs ViT-L-14-336 at 518).
    quick_gelu: the activation (QuickGELU as OpenAI's CLIP was trained, else exact GELU).
    pos_embed_antialias, pos_embed_interpolation: how loaded positional embeddings are resized to
        ``image_size``: bicubic or bilinear, ``align_corners=False``, with or without antialiasing
        (the code bases differ: open_clip and APRIL-GAN bicubic with antialias, AdaCLIP bicubic
        without, AnomalyCLIP bilinear without).
    """

    model_name: str
    pretrained: str | None = None
    image_size: int | None = None
    quick_gelu: bool = False
    pos_embed_antialias: bool = True
    pos_embed_interpolation: str = "bicubic"

    def __post_init__(self):
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise BackboneError(f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}, "
                                f"got {self.pos_embed_interpolation!r}")


@dataclass(frozen=True)
class Architecture:
    """What an open_clip architecture is, read from its config without building it.

    layers: image transformer depth; patch_size, image_size: in pixels (the native resolution).
    """

    name: str
    layers: int
    patch_size: int
    image_size: int

    def grid_size(self, image_size: int | None = None) -> int:
        """Patches per side at ``image_size`` (default: the native resolution)."""
        return (image_size or self.image_size) // self.patch_size


def architecture(model_name: str) -> Architecture:
    """The :class:`Architecture` of an open_clip ViT config (``ViT-L-14-336``, ``clipad-tiny-ViT``);
    configs validate layer numbers and window sizes with it before any weights are built."""
    config = open_clip.get_model_config(model_name)
    vision = (config or {}).get("vision_cfg", {})
    if not config or "patch_size" not in vision:
        raise BackboneError(f"unknown CLIP ViT architecture {model_name!r}; e.g. {', '.join(TINY_MODELS)}, "
                            "ViT-B-16, ViT-B-16-plus-240, ViT-L-14-336 (open_clip.list_models() lists all)")
    size = vision.get("image_size", 224)
    return Architecture(model_name, int(vision["layers"]), int(vision["patch_size"]),
                        int(size[0] if isinstance(size, (list, tuple)) else size))


# Their length may differ from the model's (another resolution or context length): loading resizes them.
RESIZABLE_POSITIONAL_EMBEDDINGS = ("positional_embedding", "text.positional_embedding", "visual.positional_embedding")


def check_state_dict(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                     source: str, resizable: Sequence[str] = ()) -> None:
    """Fail naming every missing, unexpected or wrongly shaped tensor of ``state_dict``.

    Tensors named in ``resizable`` only need the model's number of dimensions and width (last dim).
    """
    problems = []
    for key in sorted(set(expected) - set(state_dict)):
        problems.append(f"missing tensor {key!r} (shape {list(expected[key].shape)})")
    for key in sorted(set(state_dict) - set(expected)):
        problems.append(f"unexpected tensor {key!r}")
    for key in sorted(set(expected) & set(state_dict)):
        want, got = tuple(expected[key].shape), tuple(state_dict[key].shape)
        if key in resizable and len(want) == len(got) and want[-1:] == got[-1:]:
            continue
        if want != got:
            problems.append(
                f"tensor {key!r} has shape {list(state_dict[key].shape)} in the checkpoint "
                f"but the model expects {list(expected[key].shape)}"
            )
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: {shown}. "
            "Check that the checkpoint belongs to this architecture."
        )


def load_clip_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                         pos_embed_antialias: bool = True, pos_embed_interpolation: str = "bicubic") -> bool:
    """Load an open_clip state dict into ``model``, positional embeddings resized to its
    resolution, every tensor checked first (a mismatch names each wrong tensor).

    The image positional embedding keeps its class token and is resized with
    ``pos_embed_interpolation`` (bicubic or bilinear) and ``align_corners=False``, antialiased or
    not: open_clip 3.3 antialiases bicubically, the official AdaCLIP code resizes bicubically without
    antialias, AnomalyCLIP's bilinearly without. Returns whether the image positional embedding was
    resized."""
    expected = model.state_dict()
    # Half-precision files (the shipped tiny CLIP) load into the model's float32: cast first, since
    # the positional-embedding resize has no half-precision kernel on CPU.
    state_dict = {key: value.to(expected[key].dtype) if key in expected and value.is_floating_point() else value
                  for key, value in state_dict.items()}
    # Checked before open_clip's resizing, which asserts on a wrong width instead of naming the tensor.
    check_state_dict(expected, state_dict, source, resizable=RESIZABLE_POSITIONAL_EMBEDDINGS)
    before = state_dict.get("visual.positional_embedding")
    resize_pos_embed(state_dict, model, interpolation=pos_embed_interpolation, antialias=pos_embed_antialias)
    resize_text_pos_embed(state_dict, model)
    check_state_dict(expected, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    after = state_dict.get("visual.positional_embedding")
    return before is not None and tuple(before.shape) != tuple(after.shape)


def load_clip_checkpoint(model: nn.Module, path: str | Path, pos_embed_antialias: bool = True,
                         pos_embed_interpolation: str = "bicubic") -> bool:
    """Load a local open_clip checkpoint (``.safetensors`` or a torch file read with
    ``weights_only=True``), checking every tensor first; return whether positional embeddings
    were resized."""
    from .checkpoint_files import checkpoint_error

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        state_dict = _open_clip_load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise checkpoint_error(path, exc) from None
    return load_clip_state_dict(model, state_dict, str(path), pos_embed_antialias, pos_embed_interpolation)


class ClipBackbone(FrozenEncoder):
    """A frozen open_clip model with accessors for patch tokens and embeddings.

    Its parameters never require gradients; methods add their own learnable parts around it.
    """

    def __init__(self, model: nn.Module, spec: ClipSpec, tokenizer, weights_resized: bool = False):
        super().__init__()
        self.weights_resized = weights_resized  # loaded positional embeddings were interpolated
        self.freeze(model)
        self.spec = spec
        self.tokenizer = tokenizer
        visual = model.visual
        self.image_size = int(visual.image_size[0])
        self.native_image_size = architecture(spec.model_name).image_size  # before any resize
        self.patch_size = int(visual.patch_size[0])
        self.num_layers = len(visual.transformer.resblocks)
        self.width = int(visual.transformer.width)
        self.embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else None
        preprocess = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))

    # -- the seams methods use (only this package knows open_clip's internals) --------------

    @property
    def image_blocks(self) -> nn.ModuleList:
        """The image transformer's residual blocks, in order (for encoders that change the
        token sequence between blocks, such as prompting)."""
        return self.model.visual.transformer.resblocks

    def image_input_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + N, C]: the class token and patch embeddings with positional
        embeddings and the pre-transformer LayerNorm, i.e. the first block's input."""
        self.check_images(images)
        return self.model.visual._embeds(images)

    def run_image_transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every image block over a token sequence [B, L, C] (any L, e.g. a window of patches
        with the class token) -> [B, L, C]."""
        return self.model.visual.transformer(tokens)

    def pool_image_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output tokens [B, L, C] of the last block -> (image embedding [B, D]: pooled, ln_post,
        projected, not normalized; the other tokens [B, L - 1, C] after ln_post)."""
        visual = self.model.visual
        pooled, rest = visual._pool(tokens)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled, rest

    def protocol(self) -> dict[str, str]:
        """The backbone's fidelity choices, for run records: activation and positional-embedding
        resize ("none" when no weights were resized to a non-native resolution)."""
        resized = self.weights_resized
        resize = f"{self.spec.pos_embed_interpolation}, {'antialias' if self.spec.pos_embed_antialias else 'no antialias'}"
        return {"activation": "quick_gelu" if self.spec.quick_gelu else "gelu",
                "pos_embed_resize": resize if resized else "none"}

    def patch_tokens(self, images: torch.Tensor, layers: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Tokens of the chosen transformer layers.

        Args:
            images: [B, 3, S, S] normalized images at ``image_size``.
            layers: 1-based layer indices.
        Returns:
            (patch tokens per layer, each [B, N, C] with N = (S / patch)^2 and C = width;
             image embedding [B, D], the model's pooled and projected output, not normalized).
        """
        self.check_images(images)
        output = self.model.visual.forward_intermediates(
            images, indices=self.layer_indices(layers), output_fmt="NLC", output_extra_tokens=False
        )
        return list(output["image_intermediates"]), output["image_features"]

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map intermediate tokens [B, N, C] into the joint embedding space [B, N, D] (ln_post, proj)."""
        visual = self.model.visual
        projected = visual.ln_post(tokens)
        return projected @ visual.proj if visual.proj is not None else projected

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings [B, D] (:meth:`pooled_image_embedding` of the input tokens)."""
        self.check_images(images)
        pooled = self.pooled_image_embedding(self.image_input_tokens(images))
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def pooled_image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token sequences [B, L, C] (the first block's input, class token first; any L, e.g. a
        window of patches) -> their pooled, projected image embedding [B, D], not normalized.
        A ViT pooled by its class token computes only that token in the last block
        (:func:`last_token_output`); other towers run every block whole."""
        visual = self.model.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok" \
                or not getattr(visual.transformer, "batch_first", False):
            pooled, _ = self.pool_image_tokens(self.run_image_transformer(tokens))
            return pooled
        blocks = self.image_blocks
        for block in blocks[:-1]:
            tokens = block(tokens)
        cls = last_token_output(blocks[-1], tokens, torch.zeros(tokens.shape[0], dtype=torch.long,
                                                                device=tokens.device))
        pooled, _ = self.pool_image_tokens(cls[:, None])
        return pooled

    def encode_text(self, prompts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings [P, D] of a list of prompts."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(prompts)).to(device)
        return self.model.encode_text(tokens, normalize=normalize)


def last_token_output(block: nn.Module, x: torch.Tensor, rows: torch.Tensor,
                      attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One residual block's output at a single token per sequence, without computing the others.

    When only one token of a tower's output is read (the class token of an image, the
    end-of-text token of a sentence), the last block needs keys and values of every token but
    queries, attention output, residual and MLP for that token alone: about a twelfth less work
    for a 12-layer tower, and the same values as the full block up to float rounding.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (any other block runs whole, then is read).
        x: [B, L, C] the block's input (batch first).
        rows: [B] int64 the token read from each sequence.
        attn_mask: [L, L] mask of the full block (the text tower's causal mask): additive floats,
            or booleans True where attention is not allowed (PyTorch's convention); or None.
    Returns:
        [B, C] equal to ``block(x, attn_mask=attn_mask)[b, rows[b]]``.
    """
    batch = torch.arange(x.shape[0], device=x.device)
    if type(block) is not open_clip.transformer.ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return block(x, attn_mask=attn_mask)[batch, rows]
    if not block.attn.batch_first:
        raise BackboneError("last_token_output needs batch-first blocks ([B, L, C]), as open_clip builds them")
    normed = block.ln_1(x)
    # The query's own row of the full mask, as a per-sequence additive mask over the keys.
    key_mask = None
    if attn_mask is not None:
        key_mask = attn_mask[rows]  # [B, L]
        key_mask = (torch.zeros_like(key_mask, dtype=x.dtype).masked_fill(key_mask, float("-inf"))
                    if key_mask.dtype == torch.bool else key_mask.to(x.dtype))
    attended = block.attn(normed[batch, rows][:, None], normed, normed, need_weights=False,
                          key_padding_mask=key_mask)[0]
    y = x[batch, rows][:, None] + block.ls_1(attended)
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y[:, 0]


def _pretrained_state(model_name: str, tag: str, cache_dir, quick_gelu: bool) -> tuple[dict, dict]:
    """(state dict, preprocess config) of a pretrained tag, through open_clip's own download and
    conversion at the architecture's native resolution."""
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if tag not in tags:
        raise BackboneError(f"{tag!r} is neither a local checkpoint file nor a pretrained tag of {model_name} "
                            f"(tags: {', '.join(tags) or 'none'})")
    cache = cache_dir or paths.weights_dir()
    try:
        native = open_clip.create_model(model_name, pretrained=tag, cache_dir=str(cache) if cache else None,
                                        force_quick_gelu=quick_gelu)
    except Exception as exc:
        raise BackboneError(
            f"could not load {model_name}/{tag} weights: {exc}. On a machine without network, put the "
            "weights in the cache first (CLIPAD_WEIGHTS or the HF cache) or pass a local checkpoint path."
        ) from None
    return native.state_dict(), dict(getattr(native.visual, "preprocess_cfg", {}) or {})


def build_clip(model_name: str, pretrained: str | None = None, image_size: int | None = None,
               device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
               quick_gelu: bool = False, init_seed: int = 0, pos_embed_antialias: bool = True,
               pos_embed_interpolation: str = "bicubic") -> ClipBackbone:
    """Build a frozen CLIP backbone.

    Args:
        model_name: an open_clip architecture or a registered ``clipad-tiny-*`` config.
        pretrained: a pretrained tag, a local checkpoint path, or None (random init); the tag
            ``"clipad-synthetic"`` of ``clipad-tiny-ViT`` is the package's own file (SHIPPED_WEIGHTS).
        image_size: input resolution (None = the architecture's own).
        device: where the model lives.
        cache_dir: weights cache for tags (default ``$CLIPAD_WEIGHTS`` or the open_clip/HF cache).
        quick_gelu: use QuickGELU, as OpenAI's CLIP was trained; open_clip's default for the plain
            architecture names is exact GELU, which is what AdaCLIP's released checkpoints expect.
        init_seed: seeds the random initialisation (when no weights are loaded), so a random-init
            backbone is the same whatever ran before; the caller's RNG state is left untouched.
        pos_embed_antialias: resize loaded positional embeddings to ``image_size`` with antialiasing
            (open_clip's and APRIL-GAN's way) or without (AdaCLIP's); see each method's config.
        pos_embed_interpolation: ``"bicubic"`` (open_clip, AdaCLIP, APRIL-GAN) or ``"bilinear"``
            (AnomalyCLIP's code) for that resize.

    Weights (a tag's or a file's) are always loaded into a model built at ``image_size``, through
    :func:`load_clip_state_dict`, so the resize rule is the same for both.
    """
    known = open_clip.list_models()
    if model_name not in known:
        raise BackboneError(f"unknown CLIP architecture {model_name!r}; e.g. {', '.join(TINY_MODELS)}, "
                            "ViT-B-16, ViT-B-16-plus-240, ViT-L-14-336 (open_clip.list_models() lists all)")
    spec = ClipSpec(model_name, pretrained, image_size, quick_gelu, pos_embed_antialias, pos_embed_interpolation)
    kwargs = {"force_image_size": image_size} if image_size else {}
    if quick_gelu:
        kwargs["force_quick_gelu"] = True
    local_path = shipped_weights(model_name, pretrained)
    if local_path is None and pretrained is not None and Path(pretrained).expanduser().is_file():
        local_path = Path(pretrained).expanduser()
    tag_state = _pretrained_state(model_name, pretrained, cache_dir, quick_gelu) \
        if pretrained is not None and local_path is None else None
    with _quiet_random_init(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = open_clip.create_model(model_name, pretrained=None, **kwargs)
    resized = False
    if tag_state is not None:
        state_dict, preprocess = tag_state
        resized = load_clip_state_dict(model, state_dict, f"{model_name}/{pretrained}", pos_embed_antialias,
                                       pos_embed_interpolation)
        set_model_preprocess_cfg(model, {**preprocess, "size": model.visual.image_size})
    elif local_path is not None:
        resized = load_clip_checkpoint(model, local_path, pos_embed_antialias, pos_embed_interpolation)
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipBackbone(model, spec, tokenizer, weights_resized=resized).to(device)


def shipped_weights(model_name: str, pretrained: str | None) -> Path | None:
    """The package's file for a shipped (architecture, tag) such as ``("clipad-tiny-ViT",
    "clipad-synthetic")``, None for any other tag; a shipped tag whose file is gone fails
    saying how to remake it."""
    path = SHIPPED_WEIGHTS.get((model_name, pretrained))
    if path is None:
        if any(tag == pretrained for _name, tag in SHIPPED_WEIGHTS):
            names = ", ".join(name for name, tag in SHIPPED_WEIGHTS if tag == pretrained)
            raise BackboneError(f"the shipped weights {pretrained!r} exist for {names} only, not {model_name!r}")
        return None
    if not path.is_file():
        raise BackboneError(f"the shipped weights {model_name}/{pretrained} are missing ({path}); reinstall the "
                            "package or remake them with scripts/pretrain_tiny_clip.py")
    return path
