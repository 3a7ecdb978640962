"""Prompting layers for both CLIP encoders (AdaCLIP §4.2–4.3, Eq. 1–3, supp. Fig. 1).

For the first ``depth`` transformer layers, ``length`` learnable prompt tokens join the layer
input; deeper layers carry the last prompts forward. Prompts are

* static: one [length, width] parameter per prompted layer, shared by all images;
* dynamic: made per image from the frozen CLIP image embedding by one linear map per prompt
  token (the Dynamic Prompt Generator), shared by all prompted layers;
* hybrid: static + dynamic.

Placement. The image encoder appends the prompts after CLS and patch tokens at layer 0 and
replaces them at layers 1..depth-1 (this is Eq. 1–2 and also what the official code does).
The text encoder has two options, because the official code — which produced the released
checkpoints — differs from the paper's wording:

* ``"official"`` (default): no prompt at layer 0; at layers 1..depth-1 the token positions
  1..length after the start token are overwritten (so the layer-0 text prompt is unused);
* ``"paper"``: the prompts are inserted after the start token at layer 0 (the sentence moves
  right by ``length``; the same number of padding tokens drop off the end) and replaced at
  layers 1..depth-1, as Eq. 1–2 write it.

The frozen backbone's weights never receive gradients; attention runs through open_clip's
blocks, which call PyTorch's fused attention (no attention weights are materialised).
The image side goes through :class:`ClipBackbone`'s public seams (input tokens, blocks, pooling);
the text side reaches into open_clip's CLIP text tower, which only this package may do;
open_clip is pinned in pyproject.toml.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .clip import BackboneError, ClipBackbone

TEXT_PLACEMENTS = ("official", "paper")


@dataclass(frozen=True)
class PromptConfig:
    length: int = 5          # M, prompting length (AdaCLIP §5.1)
    depth: int = 4           # J, prompting depth (AdaCLIP §5.1)
    static: bool = True      # static prompts P^S (§4.3); static=dynamic=False means no prompt at all
    dynamic: bool = True     # dynamic prompts P^D = DPG(I) (Eq. 3)
    image: bool = True       # prompt the image encoder (supp. Tab. 2: prompting encoders)
    text: bool = True        # prompt the text encoder
    text_placement: str = "official"  # see module docstring

    def __post_init__(self):
        if self.text_placement not in TEXT_PLACEMENTS:
            raise ValueError(f"text_placement must be one of {TEXT_PLACEMENTS}, got {self.text_placement!r}")
        if self.length < 0 or self.depth < 0:
            raise ValueError(f"prompt length and depth must be >= 0, got {self.length} and {self.depth}")

    @property
    def active(self) -> bool:
        return self.length > 0 and self.depth > 0 and (self.static or self.dynamic)

    @property
    def image_active(self) -> bool:
        return self.active and self.image

    @property
    def text_active(self) -> bool:
        return self.active and self.text


class DynamicPromptGenerator(nn.Module):
    """One linear map per prompt token: [B, D] image embedding -> [B, length, width] prompts."""

    def __init__(self, embed_dim: int, width: int, length: int):
        super().__init__()
        self.head = nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(length))

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return torch.stack([linear(image_embedding) for linear in self.head], dim=1)


def _static_prompts(depth: int, length: int, width: int) -> nn.ParameterList:
    prompts = nn.ParameterList(nn.Parameter(torch.empty(length, width)) for _ in range(depth))
    for prompt in prompts:
        nn.init.normal_(prompt, std=0.02)  # the official initialisation
    return prompts


class PromptedCLIP(nn.Module):
    """A frozen :class:`ClipBackbone` whose encoders take static/dynamic/hybrid prompts."""

    def __init__(self, backbone: ClipBackbone, config: PromptConfig = PromptConfig()):
        super().__init__()
        self.backbone = backbone
        self.config = config
        model = backbone.model
        if getattr(model, "text_pool_type", "argmax") != "argmax" or not hasattr(model, "token_embedding"):
            raise BackboneError(f"{backbone.spec.model_name}: prompting needs a CLIP text tower with argmax pooling")
        for active, depth_limit, name in ((config.image_active, backbone.num_layers, "image"),
                                          (config.text_active, len(model.transformer.resblocks), "text")):
            if active and config.depth > depth_limit:
                raise BackboneError(f"prompting depth {config.depth} exceeds the {depth_limit} {name} layers")
        self.image_width = backbone.width
        self.text_width = model.transformer.width
        embed_dim = backbone.embed_dim
        self.image_static = (_static_prompts(config.depth, config.length, self.image_width)
                             if config.image_active and config.static else None)
        self.text_static = (_static_prompts(config.depth, config.length, self.text_width)
                            if config.text_active and config.static else None)
        self.image_dynamic = (DynamicPromptGenerator(embed_dim, self.image_width, config.length)
                              if config.image_active and config.dynamic else None)
        self.text_dynamic = (DynamicPromptGenerator(embed_dim, self.text_width, config.length)
                             if config.text_active and config.dynamic else None)

    # -- prompts ---------------------------------------------------------------------------

    @torch.no_grad()
    def frozen_image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The un-prompted, unnormalized CLIP image embedding [B, D] the dynamic prompts come from."""
        return self.backbone.encode_image(images, normalize=False)

    def _layer_prompts(self, static: nn.ParameterList | None, dynamic: torch.Tensor | None, layer: int,
                       batch: int) -> torch.Tensor:
        """Prompts [batch, length, width] of one layer: static, dynamic, or their sum."""
        parts = []
        if static is not None:
            parts.append(static[layer].unsqueeze(0).expand(batch, -1, -1))
        if dynamic is not None:
            parts.append(dynamic)
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def _dynamic(self, generator: DynamicPromptGenerator | None, source: torch.Tensor | None):
        if generator is None:
            return None
        if source is None:
            raise BackboneError("dynamic prompts need the frozen image embedding (dynamic_source)")
        return generator(source)

    # -- encoders --------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, layers: Sequence[int],
                     dynamic_source: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Prompted image encoder.

        Args:
            images: [B, 3, S, S] at the backbone's resolution.
            layers: 1-based layers whose patch tokens to return.
            dynamic_source: [B, D] from :meth:`frozen_image_embedding` (needed for dynamic prompts).
        Returns:
            (pooled, projected image embedding [B, D] (not normalized),
             patch tokens per layer [B, N, C] — CLS and prompt tokens excluded).
        """
        backbone = self.backbone
        wanted = set(backbone.layer_indices(layers))
        x = backbone.image_input_tokens(images)
        num_patches = x.shape[1] - 1
        length = self.config.length
        prompted = self.config.image_active
        dynamic = self._dynamic(self.image_dynamic, dynamic_source) if prompted else None
        patch_tokens = []
        for index, block in enumerate(backbone.image_blocks):
            if prompted and index < self.config.depth:
                prompts = self._layer_prompts(self.image_static, dynamic, index, x.shape[0]).to(x.dtype)
                x = torch.cat([x if index == 0 else x[:, :-length], prompts], dim=1)
            x = block(x)
            if index in wanted:
                patch_tokens.append(x[:, 1:1 + num_patches])
        pooled, _ = backbone.pool_image_tokens(x)
        return pooled, patch_tokens

    def encode_text(self, tokens: torch.Tensor, dynamic_source: torch.Tensor | None = None) -> torch.Tensor:
        """Prompted text encoder.

        Args:
            tokens: [P, L] tokenized sentences.
            dynamic_source: [B, D] frozen image embeddings; needed for dynamic text prompts.
        Returns:
            [P, D] text embeddings (not normalized), or [B, P, D] with dynamic text prompts,
            since each image then conditions its own text embeddings.
        """
        model = self.backbone.model
        prompted = self.config.text_active
        dynamic = self._dynamic(self.text_dynamic, dynamic_source) if prompted else None
        sentences = tokens.shape[0]
        images = dynamic.shape[0] if dynamic is not None else 1
        if dynamic is not None:  # one copy of every sentence per image
            tokens = tokens.unsqueeze(0).expand(images, -1, -1).reshape(images * sentences, -1)
            dynamic = dynamic.repeat_interleave(sentences, dim=0)
        end_of_text = tokens.argmax(dim=-1)
        length = self.config.length
        paper = self.config.text_placement == "paper"
        if prompted and paper and int(end_of_text.max()) + length >= tokens.shape[1]:
            raise BackboneError(f"a sentence is too long to insert {length} prompt tokens into the context")
        # Attention is causal and the embedding is read at the end-of-text token, so the padding
        # after the longest sentence cannot change the result: drop it (~5x less text compute).
        used = int(end_of_text.max()) + 1
        if prompted:
            used = max(used, length + 2)  # the overwritten positions 1..length must exist
            if paper:
                used += length  # room for the sentence pushed right by the inserted prompts
        used = min(used, tokens.shape[1])
        tokens = tokens[:, :used]
        attn_mask = model.attn_mask[:used, :used] if model.attn_mask is not None else None
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:used].to(cast_dtype)
        for index, block in enumerate(model.transformer.resblocks):
            if prompted and index < self.config.depth:
                prompts = self._layer_prompts(self.text_static, dynamic, index, x.shape[0]).to(x.dtype)
                if paper and index == 0:
                    x = torch.cat([x[:, :1], prompts, x[:, 1:-length]], dim=1)
                elif index > 0:
                    x = torch.cat([x[:, :1], prompts, x[:, 1 + length:]], dim=1)
            x = block(x, attn_mask=attn_mask)
        x = model.ln_final(x)
        if prompted and paper:
            end_of_text = end_of_text + length
        pooled = x[torch.arange(x.shape[0], device=x.device), end_of_text]
        pooled = model.text_projection(pooled) if isinstance(model.text_projection, nn.Linear) \
            else pooled @ model.text_projection
        return pooled.reshape(images, sentences, -1) if dynamic is not None else pooled

    def learnable_parameters(self) -> list[nn.Parameter]:
        """The prompt parameters (the backbone's own stay frozen)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]
