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

AnomalyCLIP's encoders live here too (:func:`encode_text_embeddings`, :func:`dpam_encode_image`):
learnable word embeddings with deep prompts in the text tower, and a parallel V-V attention path
in the last image blocks (DPAM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip import BackboneError, ClipBackbone, last_token_output

TEXT_PLACEMENTS = ("official", "paper")


def _project_text(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The text tower's final projection of the end-of-text tokens [P, width] -> [P, D]."""
    return model.text_projection(pooled) if isinstance(model.text_projection, nn.Linear) \
        else pooled @ model.text_projection


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


def length_buckets(lengths: Sequence[int], max_buckets: int = 3, min_saving: float = 0.1) -> list[list[int]]:
    """Split sentences into at most ``max_buckets`` groups of similar length.

    A text tower is causal and read at the end-of-text token, so a group of sentences can be cut
    to its own longest one. The groups are contiguous runs of the sorted lengths, chosen to
    minimise the padded tokens (the sum over groups of size x longest length). Each extra group
    is one more pass through the tower, so one is only added when it saves at least
    ``min_saving`` of the single group's tokens. AdaCLIP's 48 ensemble sentences need 9 to 14
    tokens (at least 7 with its 5 prompt tokens): two groups pad to 558 tokens instead of 672,
    a sixth less text-tower work, and a third would save only 16 more.

    Args:
        lengths: per sentence the tokens it needs (up to and including end-of-text).
        max_buckets: at most this many groups (1: one group, cut to the longest sentence).
        min_saving: the fraction of the one-group tokens an extra group must save.
    Returns:
        lists of sentence indices, shortest group first, each in its original order.
    """
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    needed = [int(n) for n in lengths]
    if not needed:
        raise ValueError("length_buckets needs at least one sentence length")
    lengths = sorted(set(needed))
    count = {length: 0 for length in lengths}
    for n in needed:
        count[n] += 1

    def members(first: int, last: int) -> int:
        return sum(count[length] for length in lengths[first:last + 1])

    # best[k][j]: (fewest padded tokens covering lengths[:j + 1] with at most k + 1 groups, its cuts)
    best = [[(members(0, j) * lengths[j], ()) for j in range(len(lengths))]]
    for _ in range(1, min(max_buckets, len(lengths))):
        row = []
        for j in range(len(lengths)):
            options = [best[-1][j]]
            for cut in range(j):  # the last group covers lengths[cut + 1 .. j]
                tokens, cuts = best[-1][cut]
                options.append((tokens + members(cut + 1, j) * lengths[j], cuts + (cut,)))
            row.append(min(options))
        best.append(row)
    single = best[0][-1][0]
    chosen = 0
    while chosen + 1 < len(best) and best[chosen][-1][0] - best[chosen + 1][-1][0] >= min_saving * single:
        chosen += 1
    _, cuts = best[chosen][-1]
    bounds = [lengths[c] for c in cuts] + [lengths[-1]]  # the longest length of each group
    groups: list[list[int]] = [[] for _ in bounds]
    for index, n in enumerate(needed):
        groups[next(g for g, bound in enumerate(bounds) if n <= bound)].append(index)
    return [group for group in groups if group]


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

    def encode_text(self, tokens: torch.Tensor, dynamic_source: torch.Tensor | None = None,
                    max_buckets: int = 3) -> torch.Tensor:
        """Prompted text encoder.

        Args:
            tokens: [P, L] tokenized sentences.
            dynamic_source: [B, D] frozen image embeddings; needed for dynamic text prompts.
            max_buckets: the sentences run in at most this many groups of similar length, each
                cut to its own longest sentence (:func:`length_buckets`, which adds a group only
                where it saves a tenth of the tokens; 1: one group, cut to the longest of all).
                The result does not depend on it beyond float rounding.
        Returns:
            [P, D] text embeddings (not normalized), or [B, P, D] with dynamic text prompts,
            since each image then conditions its own text embeddings.
        """
        prompted = self.config.text_active
        dynamic = self._dynamic(self.text_dynamic, dynamic_source) if prompted else None
        buckets = length_buckets(self._tokens_needed(tokens).tolist(), max_buckets)
        if len(buckets) == 1:
            return self._encode_text_rows(tokens, dynamic)
        order = [row for bucket in buckets for row in bucket]
        parts = [self._encode_text_rows(tokens[torch.as_tensor(bucket, device=tokens.device)], dynamic)
                 for bucket in buckets]
        encoded = torch.cat(parts, dim=-2)  # sentences in bucket order, [P, D] or [B, P, D]
        return encoded.index_select(-2, torch.as_tensor(order, device=encoded.device).argsort())

    def _tokens_needed(self, tokens: torch.Tensor) -> torch.Tensor:
        """[P] context positions each sentence of ``tokens`` [P, L] needs: up to its end-of-text
        token (attention is causal and the embedding is read there, so later padding cannot change
        it); with prompts at least positions 1..length, and in the paper placement ``length``
        more for the sentence the inserted prompts push right."""
        needed = tokens.argmax(dim=-1) + 1
        if self.config.text_active:
            needed = needed.clamp_min(self.config.length + 2)
            if self.config.text_placement == "paper":
                needed = needed + self.config.length
        return needed

    def _encode_text_rows(self, tokens: torch.Tensor, dynamic: torch.Tensor | None) -> torch.Tensor:
        """:meth:`encode_text` of one group of sentences [P, L], given the dynamic prompts [B, length, width]."""
        model = self.backbone.model
        prompted = self.config.text_active
        sentences = tokens.shape[0]
        images = dynamic.shape[0] if dynamic is not None else 1
        length = self.config.length
        paper = self.config.text_placement == "paper"
        blocks = model.transformer.resblocks
        # With dynamic prompts every sentence is copied per image, but the blocks before the first
        # one that takes prompts see the sentences alone ("official": block 0; "paper": none): they
        # run once on the P sentences, and the copies are made after them.
        shared = 0 if paper else 1 if self.config.depth > 1 else len(blocks)
        if dynamic is not None:
            dynamic = dynamic.repeat_interleave(sentences, dim=0)
        end_of_text = tokens.argmax(dim=-1)
        if prompted and paper and int(end_of_text.max()) + length >= tokens.shape[1]:
            raise BackboneError(f"a sentence is too long to insert {length} prompt tokens into the context")
        used = min(int(self._tokens_needed(tokens).max()), tokens.shape[1])  # the padding after is dropped
        tokens = tokens[:, :used]
        attn_mask = model.attn_mask[:used, :used] if model.attn_mask is not None else None
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:used].to(cast_dtype)
        first = 0
        if dynamic is not None:  # one copy of every sentence per image, after the shared blocks
            for block in blocks[:shared]:
                x = block(x, attn_mask=attn_mask)
            first = shared
            x = x.unsqueeze(0).expand(images, -1, -1, -1).reshape(images * sentences, *x.shape[1:])
            end_of_text = end_of_text.repeat(images)
        if prompted and paper:
            end_of_text = end_of_text + length
        for index in range(first, len(blocks)):
            block = blocks[index]
            if prompted and index < self.config.depth:
                prompts = self._layer_prompts(self.text_static, dynamic, index, x.shape[0]).to(x.dtype)
                if paper and index == 0:
                    x = torch.cat([x[:, :1], prompts, x[:, 1:-length]], dim=1)
                elif index > 0:
                    x = torch.cat([x[:, :1], prompts, x[:, 1 + length:]], dim=1)
            if index == len(blocks) - 1:  # only the end-of-text token is read
                x = last_token_output(block, x, end_of_text, attn_mask)
            else:
                x = block(x, attn_mask=attn_mask)
        if x.ndim == 3:  # every block ran before the copies per image: read the end-of-text tokens
            x = x[torch.arange(x.shape[0], device=x.device), end_of_text]
        pooled = _project_text(model, model.ln_final(x))
        return pooled.reshape(images, sentences, -1) if dynamic is not None else pooled

    def learnable_parameters(self) -> list[nn.Parameter]:
        """The prompt parameters (the backbone's own stay frozen)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]


# -- AnomalyCLIP (Zhou et al., ICLR 2024): a text tower fed with embeddings, and DPAM ----------
#
# AnomalyCLIP learns the *word embeddings* of its prompts ("[V1..VE] object.") and, in the first
# text layers, token embeddings that overwrite positions 1..n (its deep compound prompts); its
# image encoder runs the last blocks twice in parallel, once as CLIP and once with V-V attention
# (Diagonally Prominent Attention Maps, DPAM). These functions give methods those two encoders.

def text_token_embeddings(backbone: ClipBackbone, tokens: torch.Tensor) -> torch.Tensor:
    """The frozen token embeddings [P, L, width] of tokenized sentences [P, L] (no positions added)."""
    model = backbone.model
    return model.token_embedding(tokens).to(model.transformer.get_cast_dtype())


def encode_text_embeddings(backbone: ClipBackbone, embeddings: torch.Tensor, end_of_text: torch.Tensor,
                           deep_prompts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """CLIP's text tower run from input embeddings instead of token ids.

    Args:
        embeddings: [P, L, width] word embeddings of P sentences (some of them learnable),
            positions not yet added.
        end_of_text: [P] index of each sentence's end-of-text token (where the embedding is read).
        deep_prompts: tensors [n, width]; the input of text layer j + 1 (0-based block index
            j + 1, j = 0..len - 1) has positions 1..n overwritten by ``deep_prompts[j]``, as
            AnomalyCLIP's official text encoder does (layer 0 keeps the input's own tokens there).
    Returns:
        [P, D] text embeddings (not normalized).
    """
    model = backbone.model
    blocks = model.transformer.resblocks
    if embeddings.ndim != 3 or embeddings.shape[-1] != model.transformer.width:
        raise BackboneError(f"expected text embeddings [P, L, {model.transformer.width}], got {list(embeddings.shape)}")
    if len(deep_prompts) >= len(blocks):
        raise BackboneError(f"{len(deep_prompts)} deep prompts need more than the {len(blocks)} text layers")
    length = max((p.shape[0] for p in deep_prompts), default=0)
    if length and int(end_of_text.min()) <= length:
        raise BackboneError(f"deep prompts of length {length} would overwrite an end-of-text token "
                            f"(at position {int(end_of_text.min())})")
    # Attention is causal and the embedding is read at the end-of-text token: the padding after
    # the longest sentence cannot change the result, so it is dropped.
    used = min(int(end_of_text.max()) + 1, embeddings.shape[1])
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings[:, :used].to(cast_dtype) + model.positional_embedding[:used].to(cast_dtype)
    attn_mask = model.attn_mask[:used, :used] if model.attn_mask is not None else None
    for index, block in enumerate(blocks):
        if 1 <= index <= len(deep_prompts):
            prompt = deep_prompts[index - 1].to(x.dtype)
            x = torch.cat([x[:, :1], prompt.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + prompt.shape[0]:]],
                          dim=1)
        if index == len(blocks) - 1:  # only the end-of-text token is read
            x = last_token_output(block, x, end_of_text, attn_mask)
        else:
            x = block(x, attn_mask=attn_mask)
    return _project_text(model, model.ln_final(x))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, C] -> [B, heads, L, C / heads]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _dpam_block(block: nn.Module, original: torch.Tensor, dpam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of both paths: (original, DPAM) tokens [B, L, C] -> the same after the block.

    Both attentions read the *original* path's tokens (ln_1 of them), with the block's own
    weights; the original path is the plain CLIP block, the DPAM path adds only its V-V
    attention output (softmax(v v^T / sqrt(d)) v, then out_proj) and skips the MLP.
    """
    attn = block.attn
    hidden = block.ln_1(original)
    q, k, v = F.linear(hidden, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t, attn.num_heads) for t in (q, k, v))
    merged = torch.cat([F.scaled_dot_product_attention(q, k, v),
                        F.scaled_dot_product_attention(v, v, v)], dim=0)  # [2B, heads, L, d]
    attended = attn.out_proj(merged.transpose(1, 2).flatten(2))  # [2B, L, C]
    plain, value_value = attended.chunk(2, dim=0)
    original = original + block.ls_1(plain)
    original = original + block.ls_2(block.mlp(block.ln_2(original)))
    return original, dpam + block.ls_1(value_value)


def dpam_encode_image(backbone: ClipBackbone, images: torch.Tensor, layers: Sequence[int], dpam_blocks: int,
                      cls_ln_post: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The image encoder of AnomalyCLIP: the last ``dpam_blocks`` blocks run a parallel DPAM path.

    The DPAM path starts as the input of the first DPAM block and accumulates the V-V attention
    outputs of every DPAM block (computed from the original path's tokens); the original path is
    CLIP unchanged. Patch tokens of a layer inside the DPAM range come from the DPAM path, earlier
    layers from the original path.

    Args:
        images: [B, 3, S, S] at the backbone's resolution.
        layers: 1-based layers whose tokens to return.
        dpam_blocks: how many of the last blocks use DPAM (0: none, plain CLIP tokens).
        cls_ln_post: apply ln_post to the class token before the projection (the official
            AnomalyCLIP code projects it without).
    Returns:
        (image embedding [B, D]: the original path's class token after the last block, projected,
         not normalized; per layer the patch tokens [B, N, C], class token excluded, before ln_post).
    """
    visual = backbone.model.visual
    blocks = backbone.image_blocks
    if not 0 <= dpam_blocks <= len(blocks):
        raise BackboneError(f"dpam_blocks must be in 0..{len(blocks)} for {backbone.spec.model_name}, got {dpam_blocks}")
    if visual.attn_pool is not None or getattr(visual, "pool_type", "tok") != "tok" or visual.proj is None:
        raise BackboneError(f"{backbone.spec.model_name}: DPAM needs a ViT pooled by its class token, with a projection")
    wanted = set(backbone.layer_indices(layers))
    first_dpam = len(blocks) - dpam_blocks
    x = backbone.image_input_tokens(images)
    dpam = None
    patch_tokens = []
    for index, block in enumerate(blocks):
        if index < first_dpam:
            x = block(x)
        else:
            if not (isinstance(block.attn, nn.MultiheadAttention) and block.attn.batch_first
                    and block.attn._qkv_same_embed_dim and not hasattr(block, "ln_1_kv")):
                raise BackboneError("DPAM needs open_clip blocks with batch-first, packed-qkv self-attention")
            x, dpam = _dpam_block(block, x, x if dpam is None else dpam)
        if index in wanted:
            patch_tokens.append((x if dpam is None else dpam)[:, 1:])
    cls = visual.ln_post(x[:, 0]) if cls_ln_post else x[:, 0]
    return cls @ visual.proj, patch_tokens
