"""AnomalyCLIP: object-agnostic text prompts learned on auxiliary data, for zero-shot detection.

Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection",
ICLR 2024, arXiv:2310.18961. Facts from the paper and its official code (zqhang/AnomalyCLIP:
``train.py``, ``test.py``, ``train.sh``/``test.sh``, ``prompt_ensemble.py``,
``AnomalyCLIP_lib/AnomalyCLIP.py``, ``loss.py``):

* a frozen CLIP ViT-L/14@336 at 518 px with QuickGELU (OpenAI's weights);
* two sentences whose first E = 12 word embeddings are learned and that name no object:
  ``"[V1..VE] object."`` (normal) and ``"[W1..WE] damaged object."`` (abnormal);
* deep prompts in the text encoder: at text layers 2..9 the token positions 1..4 are overwritten
  by learnable token embeddings (depth 9, length 4; the first layer keeps the sentence's own);
* DPAM in the image encoder: the last 19 blocks (6..24 of ViT-L) run a parallel path whose
  attention is V-V (softmax(v vᵀ/√d) v) computed from the *original* path's tokens; that path
  adds only the attention output (no MLP), the original path is CLIP unchanged. Patch tokens come
  from the DPAM path, through ``ln_post`` and the projection, L2-normalized; the image embedding
  is the original path's class token projected *without* ``ln_post`` (its
  ``VisionTransformer.forward``);
* per layer, patch probabilities ``softmax(cos(patch, text) / 0.07)`` upsampled bilinearly
  (``align_corners=False``) to the image; the map is ``(p_abnormal + 1 − p_normal) / 2`` summed
  over the layers, then ``scipy.ndimage.gaussian_filter(σ = 4)`` (scipy's ``reflect`` boundary);
  the image score is ``softmax(cos(image, text) / 0.07)[abnormal]``;
* training (text prompts only): 4 · Σ_layers (focal + dice(abnormal, mask) + dice(normal,
  1 − mask)) + cross entropy of the image logits; Adam(lr 1e-3, betas 0.5/0.999), batch 8,
  15 epochs, no augmentation; released checkpoints ``9_12_4_multiscale`` (trained on VisA).

Which layers feed the maps: the paper and the code's defaults say 6, 12, 18, 24. Until a fix of
13 April 2025 every one of those four token maps was, through an in-place addition, the last
block's DPAM output, so the released checkpoints were trained and evaluated on layer 24 four
times over; since then ``train.sh``/``test.sh`` pass ``--features_list 24`` and ``train.py``
weights the pixel loss by 4, which reproduces that training. The defaults follow the current
scripts (``layers=(24,)``, ``pixel_loss_weight=4``); ``layers=(6, 12, 18, 24)`` gives the
genuine multi-layer variant the paper describes.

Where this differs from the official code, and why:

* positional embeddings: the official code resizes them bilinearly (``align_corners=False``, no
  antialias) when the model first sees 518 px images; here they are resized the same way when
  the weights load (``pos_embed_interpolation="bilinear"``; ``"bicubic"`` is open_clip's and
  AdaCLIP's). The golden test runs at the native 224, where nothing is resized;
* precision: the official model runs in fp16 on a GPU (and on a CPU casts the deep prompts to
  fp16 with ``.half()``); here everything is fp32;
* the V-V and the plain attention use PyTorch's fused attention (no attention maps kept); the
  official code materializes them; the results agree to float rounding;
* ``compound_prompt_projections`` (eight ``Linear(768, 896)`` in the official prompt learner) are
  never called by its forward: they are not built here, and their tensors in a checkpoint are
  skipped; the checkpoint's frozen buffers (token embeddings and token ids of the two sentences)
  are not loaded but checked against this backbone's own;
* no epoch is selected on test data and the official per-epoch checkpoints are not written: the
  model after the last epoch is the model.
"""
from __future__ import annotations

import io
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BackboneError, CheckpointError, architecture, build_clip, check_state_dict
from ..backbones.checkpoint_files import read_checkpoint
from ..backbones.clip import POS_EMBED_INTERPOLATIONS
from ..backbones.prompted import dpam_encode_image, encode_text_embeddings, text_token_embeddings
from ..data.auxiliary import AuxiliaryTrainingSet, ZeroShotViolation, auxiliary_datasets, check_zero_shot
from ..data.transforms import ImageTransform
from ..io import atomic_write
from ..losses import dice_loss, focal_loss
from ..seeding import seeded
from ..training import train_epochs
from ..validation import Each, Interval, Options, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, LAYERS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY,
                   SMOOTHING_BOUNDARIES, Detector, FitData, Prediction, check_layers, gaussian_smooth)
from .registry import register_method

CHECKPOINT_FORMAT = "clipad-anomalyclip-v1"
# The object-agnostic sentences after the learnable words (prompt_ensemble.py: classnames
# ["object"], states "{}" and "damaged {}", a full stop); PLACEHOLDER marks a learnable word.
STATE_SENTENCES = ("object.", "damaged object.")
PLACEHOLDER = "X"


@dataclass(frozen=True)
class AnomalyCLIPConfig(ValidatedConfig):
    backbone: str = "ViT-L-14-336"         # train.py / test.py: AnomalyCLIP_lib.load("ViT-L/14@336px")
    pretrained: str | None = "openai"      # the same call (OpenAI's weights)
    quick_gelu: bool = True                # AnomalyCLIP_lib/AnomalyCLIP.py blocks use QuickGELU
    pos_embed_antialias: bool = False      # the official resize: F.interpolate(mode="bilinear"), no antialias
    pos_embed_interpolation: str = "bilinear"  # AnomalyCLIP_lib/AnomalyCLIP.py VisionTransformer.forward
    image_size: int = 518                  # train.sh / test.sh --image_size 518 (paper §4.1)
    layers: tuple[int, ...] = (24,)        # train.sh / test.sh --features_list 24 (see docstring)
    prompt_length: int = 12                # E, learnable word embeddings: --n_ctx 12 (paper §4.1)
    deep_prompt_depth: int = 9             # text layers with learnable tokens (the first keeps its own): --depth 9
    deep_prompt_length: int = 4            # learnable tokens per deep layer: --t_n_ctx 4
    dpam_blocks: int = 19                  # DAPM_replace(DPAM_layer=20): resblocks[-1..-19] = blocks 6..24
    image_ln_post: bool = False            # official VisionTransformer.forward: x_ori[0] @ proj, no ln_post
    temperature: float = 0.07              # train.py / test.py / compute_similarity: logits = cos / 0.07
    pixel_loss_weight: float = 4.0         # train.py: lam = 4 (the four identical maps of the released training)
    gaussian_sigma: float = 4.0            # test.py --sigma 4 (scipy gaussian_filter)
    smoothing_boundary: str = "reflect"    # scipy's gaussian_filter default
    epochs: int = 15                       # train.sh --epoch 15
    learning_rate: float = 0.001           # train.py --learning_rate 0.001
    betas: tuple[float, float] = (0.5, 0.999)  # train.py: Adam(betas=(0.5, 0.999))
    batch_size: int = 8                    # train.sh --batch_size 8
    mosaic_prob: float = 0.0               # official dataset.py: no augmentation
    device: str = "cpu"
    seed: int = 111                        # train.py --seed 111

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "quick_gelu": [bool], "pos_embed_antialias": [bool],
        "pos_embed_interpolation": [Options(POS_EMBED_INTERPOLATIONS)], "layers": [LAYERS],
        "prompt_length": [POSITIVE_INT], "deep_prompt_depth": [POSITIVE_INT],
        "deep_prompt_length": [POSITIVE_INT], "dpam_blocks": [Interval(int, 0, None)], "image_ln_post": [bool],
        "temperature": [POSITIVE], "pixel_loss_weight": [NON_NEGATIVE], "gaussian_sigma": [NON_NEGATIVE],
        "smoothing_boundary": [Options(SMOOTHING_BOUNDARIES)], "epochs": [POSITIVE_INT],
        "learning_rate": [POSITIVE], "betas": [Each(Interval(float, 0, 1, closed="left"), length=2)],
        "batch_size": [POSITIVE_INT], "mosaic_prob": [PROBABILITY], "seed": [int],
    }

    def check(self):
        check_layers(self, "layers")
        depth = architecture(self.backbone).layers
        if self.dpam_blocks > depth:
            self.fail("dpam_blocks", f"{self.backbone} has {depth} image blocks")
        text_layers = int((open_clip.get_model_config(self.backbone) or {}).get("text_cfg", {}).get("layers", 12))
        if self.deep_prompt_depth > text_layers:
            self.fail("deep_prompt_depth", f"{self.backbone} has {text_layers} text layers")


class ObjectAgnosticPrompts(nn.Module):
    """The learnable text side: the two sentences' learnable words and the deep prompts.

    Parameters: ``normal_context``, ``abnormal_context`` [E, width] (the official ``ctx_pos``,
    ``ctx_neg`` without their two singleton dimensions); ``deep_prompts.{0..depth-2}``
    [n, width] (the official ``compound_prompts_text``). Buffers (not saved, made from the frozen
    CLIP): ``tokens`` [2, L] of the sentences with placeholders and ``token_embeddings`` [2, L, width].
    """

    def __init__(self, backbone, prompt_length: int, deep_prompt_depth: int, deep_prompt_length: int):
        super().__init__()
        width = backbone.model.transformer.width
        sentences = [" ".join([PLACEHOLDER] * prompt_length + [s]) for s in STATE_SENTENCES]
        tokens = backbone.tokenizer(sentences)
        words = backbone.tokenizer(list(STATE_SENTENCES)).argmax(dim=-1) - 1  # tokens of each sentence's words
        if not torch.equal(tokens.argmax(dim=-1), prompt_length + 1 + words):
            raise BackboneError(f"prompt_length {prompt_length} leaves no room for the sentences in the "
                                f"{tokens.shape[1]}-token text context")
        self.prompt_length = prompt_length
        self.normal_context = nn.Parameter(torch.empty(prompt_length, width))
        self.abnormal_context = nn.Parameter(torch.empty(prompt_length, width))
        self.deep_prompts = nn.ParameterList(nn.Parameter(torch.empty(deep_prompt_length, width))
                                             for _ in range(deep_prompt_depth - 1))
        for parameter in self.parameters():
            nn.init.normal_(parameter, std=0.02)  # prompt_ensemble.py: every prompt N(0, 0.02²)
        device = next(backbone.parameters()).device
        self.register_buffer("tokens", tokens.to(device), persistent=False)
        with torch.no_grad():
            self.register_buffer("token_embeddings", text_token_embeddings(backbone, self.tokens), persistent=False)

    def sentence_embeddings(self) -> torch.Tensor:
        """[2, L, width]: the sentences' token embeddings with the learnable words in place."""
        context = torch.stack([self.normal_context, self.abnormal_context]).to(self.token_embeddings.dtype)
        embeddings = self.token_embeddings
        return torch.cat([embeddings[:, :1], context, embeddings[:, 1 + self.prompt_length:]], dim=1)

    def forward(self, backbone) -> torch.Tensor:
        """The (normal, abnormal) text embeddings [2, D], L2-normalized."""
        text = encode_text_embeddings(backbone, self.sentence_embeddings(), self.tokens.argmax(dim=-1),
                                      list(self.deep_prompts))
        return F.normalize(text.float(), dim=-1)


_OFFICIAL_KEYS = (
    (r"ctx_pos", "normal_context"),
    (r"ctx_neg", "abnormal_context"),
    (r"compound_prompts_text\.(\d+)", r"deep_prompts.\1"),
)
# Built by the official prompt learner but never called by its forward: skipped.
_OFFICIAL_UNUSED = r"compound_prompt_projections\.\d+\.(weight|bias)"
# Made by the official prompt learner from the frozen CLIP: checked against this backbone's own.
_OFFICIAL_FROZEN = ("token_prefix_pos", "token_suffix_pos", "token_prefix_neg", "token_suffix_neg",
                    "tokenized_prompts_pos", "tokenized_prompts_neg")


def map_official_anomalyclip_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
    """Split an official prompt-learner state dict (``checkpoint["prompt_learner"]``) into
    (our learnable tensors under our names, the official frozen buffers under theirs).

    ``ctx_pos`` / ``ctx_neg`` [1, 1, E, width] (one class "object", one state template) become
    [E, width]. A key that matches no rule is an error naming it.
    """
    mapped, frozen = {}, {}
    for key, value in state_dict.items():
        if key in _OFFICIAL_FROZEN:
            frozen[key] = value
            continue
        if re.fullmatch(_OFFICIAL_UNUSED, key):
            continue
        for pattern, replacement in _OFFICIAL_KEYS:
            if re.fullmatch(pattern, key):
                if key in ("ctx_pos", "ctx_neg"):
                    if value.ndim != 4 or tuple(value.shape[:2]) != (1, 1):
                        raise CheckpointError(f"tensor {key!r} has shape {list(value.shape)}; expected [1, 1, E, width] "
                                              "(one class 'object' and one state template)")
                    value = value[0, 0]
                mapped[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in the official AnomalyCLIP checkpoint; expected "
                                  "ctx_pos, ctx_neg, compound_prompts_text.*, compound_prompt_projections.*, "
                                  f"{', '.join(_OFFICIAL_FROZEN)}")
    return mapped, frozen


@register_method("anomalyclip", display_name="AnomalyCLIP", config=AnomalyCLIPConfig, fits_on=("auxiliary",),
                 paper="Zhou et al., AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection, "
                       "ICLR 2024, arXiv:2310.18961",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64,
                                "layers": (4, 8), "dpam_blocks": 6, "prompt_length": 4, "deep_prompt_depth": 3,
                                "deep_prompt_length": 2, "epochs": 1, "batch_size": 4})
class AnomalyCLIPDetector(Detector):
    """AnomalyCLIP behind the fit/predict protocol: ``fit`` trains the prompts on auxiliary data,
    ``predict`` is zero-shot (its prompts name no object, so class names are only checked)."""

    name = "anomalyclip"

    def __init__(self, config: AnomalyCLIPConfig = AnomalyCLIPConfig(), backbone=None):
        self.config = config
        self.backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size, config.device,
                                               quick_gelu=config.quick_gelu,
                                               pos_embed_antialias=config.pos_embed_antialias,
                                               pos_embed_interpolation=config.pos_embed_interpolation)
        self.backbone.layer_indices(config.layers)  # an unknown layer fails here, naming the valid range
        if config.dpam_blocks > self.backbone.num_layers:
            raise BackboneError(f"dpam_blocks {config.dpam_blocks} exceeds the {self.backbone.num_layers} image blocks")
        with seeded(config.seed):  # the prompts' initialisation, without touching the caller's RNG
            self.prompts = ObjectAgnosticPrompts(self.backbone, config.prompt_length, config.deep_prompt_depth,
                                                 config.deep_prompt_length).to(config.device)
        self._transform = ImageTransform.for_backbone(self.backbone)
        self.trained_categories: list[str] = []
        self.loss_history: list[float] = []

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    # -- the pipeline -----------------------------------------------------------------------

    def text_embeddings(self) -> torch.Tensor:
        """(normal, abnormal) text embeddings [2, D], L2-normalized (gradients flow to the prompts)."""
        return self.prompts(self.backbone)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images [B, 3, S, S] -> (image embedding [B, D], per configured layer the patch
        embeddings [B, N, D]; all L2-normalized). The image side is frozen: no gradients."""
        config = self.config
        embedding, tokens = dpam_encode_image(self.backbone, images.to(config.device), config.layers,
                                              config.dpam_blocks, cls_ln_post=config.image_ln_post)
        return (F.normalize(embedding.float(), dim=-1),
                [F.normalize(self.backbone.project_tokens(t).float(), dim=-1) for t in tokens])

    def image_logits(self, image_embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """[B, D], [2, D] -> [B, 2] = cos / temperature."""
        return image_embedding @ text.T / self.config.temperature

    def probability_maps(self, patch_embeddings: torch.Tensor, text: torch.Tensor, size: int) -> torch.Tensor:
        """[B, N, D] patch embeddings -> [B, 2, size, size]: the patch softmax of cos / temperature,
        upsampled bilinearly (align_corners=False), as the official ``get_similarity_map``."""
        probabilities = torch.softmax(patch_embeddings @ text.T / self.config.temperature, dim=-1)  # [B, N, 2]
        batch, count, states = probabilities.shape
        grid = int(round(count ** 0.5))
        grids = probabilities.transpose(1, 2).reshape(batch, states, grid, grid)
        return F.interpolate(grids, size=(size, size), mode="bilinear", align_corners=False)

    # -- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict) -> torch.Tensor:
        """pixel_loss_weight · Σ_layers (focal + dice(abnormal) + dice(normal, 1 − mask)) + image
        cross entropy, as the official train.py."""
        device = self.config.device
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        labels = torch.as_tensor(batch["label"], device=device).long()
        image_embedding, patch_embeddings = self.image_features(images)
        text = self.text_embeddings()
        image_loss = F.cross_entropy(self.image_logits(image_embedding, text), labels)
        pixel_loss = images.new_zeros(())
        for patches in patch_embeddings:
            maps = self.probability_maps(patches, text, images.shape[-1])
            pixel_loss = pixel_loss + focal_loss(maps, masks) + dice_loss(maps[:, 1], masks) \
                + dice_loss(maps[:, 0], 1 - masks)
        return self.config.pixel_loss_weight * pixel_loss + image_loss

    def fit(self, data: FitData) -> "AnomalyCLIPDetector":
        """Train the prompts on ``data.auxiliary`` (an AnomalyDataset or a list of them).

        Shows a progress bar with the running loss; ``loss_history`` keeps the mean loss per epoch.
        """
        datasets = auxiliary_datasets(data.auxiliary, "AnomalyCLIPDetector")
        config = self.config
        with seeded(config.seed):
            training_set = AuxiliaryTrainingSet(datasets, self.transform, config.mosaic_prob, config.seed)
            optimizer = torch.optim.Adam(self.prompts.parameters(), lr=config.learning_rate, betas=config.betas)
            start = time.perf_counter()
            self.loss_history = train_epochs(self._loss, optimizer, training_set, epochs=config.epochs,
                                             batch_size=config.batch_size, seed=config.seed, desc="AnomalyCLIP")
        self.trained_categories = training_set.categories
        self.fit_seconds = time.perf_counter() - start
        return self

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] -> image scores [B] and anomaly maps [B, S, S].

        The prompts name no object, so ``class_names`` (one per image) only serve the zero-shot
        check: a category seen in training is refused.
        """
        if class_names is not None:
            if isinstance(class_names, str) or len(class_names) != len(images):
                raise ValueError(f"expected one class name per image ({len(images)}), got {class_names!r}")
            try:
                check_zero_shot(self.trained_categories, class_names)
            except ZeroShotViolation as exc:
                raise ZeroShotViolation(f"refusing to predict: {exc}") from None
        config = self.config
        text = self.text_embeddings()
        image_embedding, patch_embeddings = self.image_features(images)
        scores = torch.softmax(self.image_logits(image_embedding, text), dim=-1)[:, 1]
        size = images.shape[-1]
        maps = torch.zeros(len(images), size, size, device=text.device)
        for patches in patch_embeddings:
            probabilities = self.probability_maps(patches, text, size)
            maps = maps + (probabilities[:, 1] + 1 - probabilities[:, 0]) / 2  # test.py's form (= p_abnormal)
        maps = gaussian_smooth(maps, config.gaussian_sigma, config.smoothing_boundary)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    # -- checkpoints ------------------------------------------------------------------------

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned prompts: ``normal_context``, ``abnormal_context``, ``deep_prompts.i``."""
        return self.prompts.state_dict()

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save the learned prompts (plus the config and the training categories)."""
        buffer = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(self.config),
                    "trained_categories": self.trained_categories, "state_dict": self.learnable_state_dict()}, buffer)
        return atomic_write(path, buffer.getvalue())

    def _load_learnable(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        check_state_dict(self.learnable_state_dict(), state_dict, source)
        self.prompts.load_state_dict(state_dict, strict=True)

    def load_checkpoint(self, path: str | Path) -> "AnomalyCLIPDetector":
        """Load a checkpoint written by :meth:`save_checkpoint`; a wrong tensor is named."""
        payload = read_checkpoint(path)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a clipad AnomalyCLIP checkpoint; for the authors' "
                                  "epoch_*.pth files use load_official_checkpoint")
        self._load_learnable(payload["state_dict"], str(path))
        self.trained_categories = list(payload.get("trained_categories", []))
        return self

    def _check_official_frozen(self, frozen: dict[str, torch.Tensor], source: str) -> None:
        """The official buffers must be this backbone's own token ids and token embeddings of the
        two sentences (else the checkpoint was made for another CLIP or other sentences)."""
        missing = [key for key in _OFFICIAL_FROZEN if key not in frozen]
        if missing:
            raise CheckpointError(f"checkpoint {source} lacks the official prompt learner's buffers {missing}")
        length = self.prompts.prompt_length
        tokens, embeddings = self.prompts.tokens.cpu(), self.prompts.token_embeddings.float().cpu()
        for row, state in enumerate(("pos", "neg")):
            theirs = frozen[f"tokenized_prompts_{state}"]
            if tuple(theirs.shape) != (1, 1, tokens.shape[1]) or not torch.equal(theirs.reshape(-1).long(), tokens[row]):
                raise CheckpointError(f"checkpoint {source}: tokenized_prompts_{state} is not this backbone's tokens "
                                      f"of {PLACEHOLDER!r} x {length} + {STATE_SENTENCES[row]!r} "
                                      f"(shape {list(theirs.shape)}, expected [1, 1, {tokens.shape[1]}])")
            for part, ours in (("prefix", embeddings[row, :1]), ("suffix", embeddings[row, 1 + length:])):
                key = f"token_{part}_{state}"
                value = frozen[key]
                if tuple(value.shape) != (1, 1, *ours.shape):
                    raise CheckpointError(f"checkpoint {source}: tensor {key!r} has shape {list(value.shape)} but "
                                          f"the model expects {[1, 1, *ours.shape]}")
                if not torch.allclose(value[0, 0].float(), ours, rtol=1e-3, atol=1e-4):
                    delta = float((value[0, 0].float() - ours).abs().max())
                    raise CheckpointError(f"checkpoint {source}: {key!r} differs from this backbone's token "
                                          f"embeddings (max |delta| {delta:.3g}): it was made for another CLIP")

    def load_official_checkpoint(self, path: str | Path, trained_categories: Sequence[str] = ()) -> "AnomalyCLIPDetector":
        """Load an official AnomalyCLIP release (``checkpoints/9_12_4_multiscale/epoch_15.pth``,
        ``{"prompt_learner": state_dict}``) by explicit key mapping; a wrong, missing or unknown
        tensor is named. ``trained_categories`` names what it was trained on (VisA's categories
        for ``9_12_4_multiscale``), so zero-shot use can be enforced."""
        payload = read_checkpoint(path)
        if not isinstance(payload, dict) or not isinstance(payload.get("prompt_learner"), dict):
            raise CheckpointError(f"{path} is not an official AnomalyCLIP checkpoint: expected "
                                  "{'prompt_learner': state_dict}, as its train.py saves")
        mapped, frozen = map_official_anomalyclip_keys(payload["prompt_learner"])
        check_state_dict(self.learnable_state_dict(), mapped, str(path))
        self._check_official_frozen(frozen, str(path))
        self.prompts.load_state_dict(mapped, strict=True)
        self.trained_categories = list(trained_categories)
        return self
