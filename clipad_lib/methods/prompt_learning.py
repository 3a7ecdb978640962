"""Prompt learners adapted to few-shot anomaly detection: the machinery CoOp, CoCoOp, MaPLe and
PDT share (Sea-CLIP supp. Tab. 7, "FSAD Results of different methods").

Sea-CLIP's supplement lists CoOp, CoCoOp and MaPLe (and PDT, its "pre-defined textual template")
as few-shot anomaly-detection baselines but says nothing about how they were adapted. What is
done here, and why:

* **Two classes, "normal" and "anomalous" object.** A prompt learner classifies an image among
  text prompts; for anomaly detection the two classes are states of the one object. Each class
  is WinCLIP's state words (7 normal, 4 abnormal) with the object name, and the learned context
  in front: "[V1..Vm] flawless bottle.", "[V1..Vm] damaged bottle." (CoOp's "[V1..Vm] [CLASS]."
  with the state words in the class slot). The sentences of a class are averaged into one text
  embedding (:func:`~clipad_lib.methods.text_prompts.state_embeddings`), as WinCLIP does. The
  context is shared by the two classes (CoOp's unified context) and learned per category.
* **What they train on.** k normal shots alone cannot teach a two-class prompt, so each shot
  gets ``anomalies_per_image`` synthetic anomalies from :mod:`clipad_lib.synthesis` (random
  perturbation by default, NSA optional), as CLIP-FSAC++ does. Sea-CLIP trains its own model on
  150 anomalies per normal image (supp. §6, made with Stable Diffusion, which this workbook
  cannot run), so the baselines get 150 too. One epoch visits every synthetic anomaly once,
  each beside its normal source image (balanced classes; 2·K·J images an epoch), so the
  learners' epoch counts keep their meaning of "passes over the training set".
* **Objective.** The learners' own: cross-entropy over the two class prompts on the image
  embedding at CLIP's logit scale. Pixel terms (focal + dice on the patch-text map against the
  synthetic masks, as Sea-CLIP's Eq. 11) are off by default (``focal_weight``/``dice_weight``;
  Sea-CLIP's own weights are 0.01 and 0.01) because the original learners have none.
* **Scores.** Image score: softmax over the two classes of the image embedding, abnormal
  probability. Anomaly map: the same for every patch token of the last layer (``map_layer``),
  brought into the joint space by the frozen ``ln_post`` and projection, upsampled bilinearly
  and smoothed with sigma 4 (the smoothing of the PromptAD / APRIL-GAN evaluations that the
  Sea-CLIP tables follow). No k-shot patch memory by default: Tab. 7's "PDT+WinCLIP" row
  (91.8 / 85.1 on MVTec AD, 78.1 / 79.6 on VisA) equals WinCLIP's published *zero-shot*
  numbers, so the table scores text against images only. ``reference_memory=True`` adds a
  WinCLIP+-style memory of the k shots' patches: map = (text map + (1 − max cosine)) / 2,
  image score = (text score + max of the memory map) / 2.
* **Schedule.** Each learner's published few-shot recipe (SGD, momentum 0.9, weight decay
  5e-4 — Dassl's defaults, which the three code bases train with —, one warm-up epoch at a
  constant 1e-5, then cosine decay over the epochs); values are given in each config with
  their source.

Deviations forced by the backbone seams (``clipad_lib.backbones`` is the only room that may
touch open_clip's internals, and its prompting module serves the text side):

* context vectors start from N(0, 0.02) for CoOp (its scripts' random "generic" context) and from
  the word embeddings of "a photo of a" for CoCoOp and MaPLe (``context_init``, their configs'
  ``CTX_INIT``; MaPLe's 2 tokens are "a photo" — the rest of the phrase, which its code keeps as
  fixed words before the class, is not kept here);
* MaPLe's vision prompts join the token sequence after the image tower's ``ln_pre`` (the first
  block's input, :meth:`ClipBackbone.image_input_tokens`), not before it as in MaPLe's code.

Shapes: B images, K shots, J anomalies per shot, P sentences, N patches, D the joint embedding
width, M context tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..backbones import ClipBackbone, architecture, build_clip
from ..backbones.prompted import PromptConfig, PromptedCLIP, text_token_embeddings
from ..data.transforms import ImageTransform
from ..losses import dice_loss, focal_loss
from ..training import gradient_step
from ..validation import Interval, Options, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, SMOOTHING_BOUNDARIES, Detector,
                   FitData, Prediction, gaussian_smooth, upsample_maps, upsample_patch_logits)
from .text_prompts import WINCLIP_ENSEMBLE, PromptEnsemble, cached_text_embeddings, prompt_class_name, state_embeddings

SYNTHESES = ("random_perturbation", "nsa")
STATE_WORDS = WINCLIP_ENSEMBLE  # the normal / abnormal state words of the learners' class prompts


# -- configs --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptScoringConfig(ValidatedConfig):
    """How images and texts become scores: shared by every detector of this module."""

    # Sea-CLIP supp. §6: OpenCLIP, LAION-400M, 240 px, CLIP features of 15 x 15 x 896. The text
    # names "ViT-B-14"; 896-wide tokens on a 15 x 15 grid at 240 px are ViT-B-16-plus-240's.
    backbone: str = "ViT-B-16-plus-240"
    pretrained: str | None = "laion400m_e31"
    image_size: int = 240
    temperature: float = 0.01      # CLIP's learned logit scale (100), which the learners' logits use
    map_layer: int | None = None   # 1-based layer whose patch tokens make the map; None: the last
    reference_memory: bool = False  # add a k-shot patch memory (module docstring)
    gaussian_sigma: float = 4.0    # PromptAD / APRIL-GAN evaluation smoothing, in pixels
    smoothing_boundary: str = "reflect"
    batch_size: int = 16           # images per encoder call while fitting
    device: str = "cpu"

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "temperature": [POSITIVE], "map_layer": [POSITIVE_INT, None],
        "reference_memory": [bool], "gaussian_sigma": [NON_NEGATIVE],
        "smoothing_boundary": [Options(SMOOTHING_BOUNDARIES)], "batch_size": [POSITIVE_INT],
    }

    def check(self):
        depth = architecture(self.backbone).layers
        if self.map_layer is not None and self.map_layer > depth:
            self.fail("map_layer", f"{self.backbone} has layers 1..{depth} (1-based); None takes the last")


@dataclass(frozen=True)
class PromptLearnerConfig(PromptScoringConfig):
    """The few-shot training of a prompt learner; each learner's config sets its paper's values."""

    context_length: int = 16               # M learnable context tokens
    context_init: str | None = None        # words whose embeddings start the context; None: N(0, 0.02)
    epochs: int | None = None              # None: ``epoch_table`` by shot count
    learning_rate: float = 0.002
    train_batch_size: int = 32
    momentum: float = 0.9                  # Dassl's SGD default (the CoOp / MaPLe code bases)
    weight_decay: float = 5e-4             # Dassl's default
    warmup_epochs: int = 1                 # WARMUP_EPOCH 1, WARMUP_TYPE constant in all three configs
    warmup_learning_rate: float = 1e-5     # WARMUP_CONS_LR
    synthesis: str = "random_perturbation"
    anomalies_per_image: int = 150         # Sea-CLIP supp. §6: 150 anomalies per normal image
    focal_weight: float = 0.0              # pixel terms off: the learners have none (Sea-CLIP Eq. 11: 0.01)
    dice_weight: float = 0.0

    epoch_table: ClassVar[dict[int, int]] = {}  # shots -> epochs when ``epochs`` is None

    constraints: ClassVar[dict] = {
        **PromptScoringConfig.constraints, "context_length": [POSITIVE_INT], "context_init": [str, None],
        "epochs": [POSITIVE_INT, None],
        "learning_rate": [POSITIVE], "train_batch_size": [POSITIVE_INT], "momentum": [Interval(float, 0, 1)],
        "weight_decay": [NON_NEGATIVE], "warmup_epochs": [Interval(int, 0, None)],
        "warmup_learning_rate": [POSITIVE], "synthesis": [Options(SYNTHESES)], "anomalies_per_image": [POSITIVE_INT],
        "focal_weight": [NON_NEGATIVE], "dice_weight": [NON_NEGATIVE],
    }

    def check(self):
        super().check()
        if self.epochs is None and not self.epoch_table:
            self.fail("epochs", f"{type(self).__name__} has no per-shot epoch table; give a number of epochs")

    def epochs_for(self, shots: int) -> int:
        """``epochs``, or the table's entry for the nearest listed shot count at or below ``shots``."""
        if self.epochs is not None:
            return int(self.epochs)
        listed = [s for s in self.epoch_table if s <= shots] or [min(self.epoch_table)]
        return self.epoch_table[max(listed)]

    def learning_rate_at(self, epoch: int, epochs: int) -> float:
        """Dassl's constant warm-up, then cosine annealing over ``epochs`` (0-based ``epoch``)."""
        if epoch < self.warmup_epochs:
            return self.warmup_learning_rate
        return 0.5 * self.learning_rate * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / epochs))


# -- encoders --------------------------------------------------------------------------------

def frozen_image_features(backbone: ClipBackbone, images: torch.Tensor,
                          map_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B, 3, S, S] -> (image embedding [B, D], patch embeddings [B, N, D]) of the frozen
    image tower; patches are layer ``map_layer``'s tokens through ``ln_post`` and the projection."""
    (tokens,), embedding = backbone.patch_tokens(images, [map_layer])
    return embedding, backbone.project_tokens(tokens)


def class_sentences(class_name: str, states: PromptEnsemble = STATE_WORDS) -> list[str]:
    """The learners' class prompts without context: normal state sentences first ("flawless
    bottle."), then abnormal ones ("damaged bottle."); the context goes in front of them."""
    name = prompt_class_name(class_name)
    return [state.format(name) + "." for group in (states.normal_states, states.abnormal_states) for state in group]


class FixedTemplates(nn.Module):
    """PDT: WinCLIP's template ensemble through the frozen text tower; nothing to learn."""

    conditional = False     # text depends on the image
    prompts_image = False   # image encoding depends on learned parameters

    def __init__(self, backbone: ClipBackbone, map_layer: int, ensemble: PromptEnsemble = WINCLIP_ENSEMBLE):
        super().__init__()
        self.backbone, self.map_layer, self.ensemble = backbone, map_layer, ensemble
        self._cache: dict[str, torch.Tensor] = {}

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return frozen_image_features(self.backbone, images, self.map_layer)

    def text_embeddings(self, class_names: Sequence[str], image_embedding: torch.Tensor) -> torch.Tensor:
        """[B, 2, D] normalized (normal, abnormal), one pair per image."""
        return cached_text_embeddings(self._cache, self.backbone, self.ensemble, list(class_names))


class ContextPrompts(nn.Module):
    """Learnable context before the class prompts, in the text tower (CoOp; CoCoOp with a meta-net).

    The text side is :class:`PromptedCLIP` with static prompts inserted after the start token
    at the input ("paper" placement) for ``depth`` layers and replaced at each deeper one — at
    depth 1 exactly CoOp's "[SOS][V1..VM][words][EOS]". ``conditional`` (CoCoOp) adds one bias
    π(x) [B, width] per image to every context token, so each image has its own prompts.
    """

    prompts_image = False

    def __init__(self, backbone: ClipBackbone, map_layer: int, length: int, depth: int = 1,
                 conditional: bool = False, init_words: str | None = None):
        super().__init__()
        self.backbone, self.map_layer = backbone, map_layer
        self.conditional = conditional
        self.prompted = PromptedCLIP(backbone, PromptConfig(length=length, depth=depth, static=True,
                                                            dynamic=conditional, image=False, text=True,
                                                            text_placement="paper"))
        if conditional:
            # PromptedCLIP adds its dynamic text prompts to the static ones at every prompted
            # layer; CoCoOp's meta-net takes the place of AdaCLIP's per-token generator there.
            self.prompted.text_dynamic = MetaNet(backbone.embed_dim, self.prompted.text_width, length)
        if init_words:
            self._start_from_words(init_words, length)
        self._tokens: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _start_from_words(self, words: str, length: int) -> None:
        """The first layer's context starts as the token embeddings of the first ``length`` tokens of
        ``words`` (CoCoOp's and MaPLe's ``CTX_INIT "a photo of a"``); deeper layers keep N(0, 0.02)."""
        tokens = self.backbone.tokenizer([words])
        count = int(tokens.argmax(dim=-1)) - 1  # word tokens between start and end of text
        if count < length:
            raise ValueError(f"context_init {words!r} has {count} tokens; the context has {length}: give at least "
                             f"{length} tokens of words, or context_init=None for a random start")
        embeddings = text_token_embeddings(self.backbone, tokens.to(next(self.backbone.parameters()).device))
        self.prompted.text_static[0].copy_(embeddings[0, 1:1 + length])

    @property
    def text_width(self) -> int:
        return self.prompted.text_width

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return frozen_image_features(self.backbone, images, self.map_layer)

    def tokens(self, class_name: str) -> torch.Tensor:
        """[P, L] tokenized class prompts of one category (normal first), on the backbone's device."""
        if class_name not in self._tokens:
            device = next(self.backbone.parameters()).device
            self._tokens[class_name] = self.backbone.tokenizer(class_sentences(class_name)).to(device)
        return self._tokens[class_name]

    def text_embeddings(self, class_names: Sequence[str], image_embedding: torch.Tensor) -> torch.Tensor:
        """[B, 2, D] normalized (normal, abnormal) for each image's class, with the current context.

        Unconditional context: one text pass per distinct class. Conditional (CoCoOp): one pass
        per distinct class over that class's images, each with its own prompts.
        """
        normal_count = len(STATE_WORDS.normal_states)
        names = list(class_names)
        output = image_embedding.new_empty(len(names), 2, image_embedding.shape[-1])
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=image_embedding.device)
            if self.conditional:
                source = F.normalize(image_embedding[rows], dim=-1)  # CoCoOp feeds the normalized feature
                sentences = self.prompted.encode_text(self.tokens(name), dynamic_source=source)  # [b, P, D]
                output[rows] = state_embeddings(sentences, normal_count).to(output.dtype)
            else:
                pair = state_embeddings(self.prompted.encode_text(self.tokens(name)), normal_count)  # [2, D]
                output[rows] = pair.to(output.dtype).expand(len(rows), -1, -1)
        return output


class MetaNet(nn.Sequential):
    """CoCoOp's meta-net: [B, D] image feature -> Linear(D, D/16) -> ReLU -> Linear(D/16, width),
    one bias repeated over the M context tokens -> [B, M, width]."""

    def __init__(self, embed_dim: int, width: int, length: int, reduction: int = 16):
        hidden = max(1, embed_dim // reduction)
        super().__init__(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        self.length = length

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return super().forward(image_features).unsqueeze(1).expand(-1, self.length, -1)


class MultiModalPrompts(ContextPrompts):
    """MaPLe: deep text prompts for the first J layers, and vision prompts made from them by one
    linear coupling function per layer (text width -> image width), so the two towers' prompts
    are learned together. Layer 0's vision prompts join after the patch tokens; at layers
    1..J-1 they replace the previous layer's (MaPLe's deep vision prompting and V-L coupling)."""

    prompts_image = True

    def __init__(self, backbone: ClipBackbone, map_layer: int, length: int, depth: int,
                 init_words: str | None = None):
        super().__init__(backbone, map_layer, length, depth, init_words=init_words)
        self.length, self.depth = length, depth
        self.couplers = nn.ModuleList(nn.Linear(self.text_width, backbone.width) for _ in range(depth))

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, S, S] -> (image embedding [B, D], patch embeddings [B, N, D]) with the
        coupled vision prompts (CLS and prompt tokens left out of the patches)."""
        backbone = self.backbone
        x = backbone.image_input_tokens(images)
        batch, patches = x.shape[0], x.shape[1] - 1
        map_index = self.map_layer - 1
        text_prompts = self.prompted.text_static  # the deep text prompts [M, width] per layer
        map_tokens = None
        for index, block in enumerate(backbone.image_blocks):
            if index < self.depth:
                prompts = self.couplers[index](text_prompts[index]).to(x.dtype).expand(batch, -1, -1)
                x = torch.cat([x if index == 0 else x[:, :-self.length], prompts], dim=1)
            x = block(x)
            if index == map_index:
                map_tokens = x[:, 1:1 + patches]
        embedding, _ = backbone.pool_image_tokens(x)
        return embedding, backbone.project_tokens(map_tokens)


# -- scoring ---------------------------------------------------------------------------------

def state_logits(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(embeddings [B, ..., D], text [B, 2, D]) / τ -> [B, ..., 2] (normal, abnormal)."""
    flat = F.normalize(embeddings.reshape(embeddings.shape[0], -1, embeddings.shape[-1]), dim=-1)
    logits = torch.einsum("bnd,bkd->bnk", flat, F.normalize(text, dim=-1)) / temperature
    return logits.reshape(*embeddings.shape[:-1], text.shape[1])


def memory_distance(patches: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """1 − max cosine of each patch [B, N, D] against a memory [R, D] (normalized) -> [B, N]."""
    return 1.0 - (F.normalize(patches, dim=-1) @ memory.T).amax(dim=-1)


def uint8_to_images(arrays: np.ndarray, transform: ImageTransform, device) -> torch.Tensor:
    """[B, S, S, 3] uint8 at the transform's size -> [B, 3, S, S] normalized, in one batch."""
    tensor = torch.from_numpy(np.ascontiguousarray(arrays)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return transform.normalize(tensor)


@dataclass
class TrainingSet:
    """The k shots and their synthetic anomalies, as one table.

    images: [K + K·J, S, S, 3] uint8, the K shots first, then each shot's J anomalies;
    masks: [K + K·J, S, S] bool (all False for the shots). An epoch has 2·K·J items: item
    t < K·J is anomaly t, item K·J + t is that anomaly's normal source, so the classes balance.
    """

    images: np.ndarray
    masks: np.ndarray
    shots: int

    @property
    def per_shot(self) -> int:
        return (len(self.images) - self.shots) // self.shots

    def __len__(self) -> int:
        return 2 * (len(self.images) - self.shots)

    def rows(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items [b] -> (rows of the table [b], labels [b]: 1 for an anomaly, 0 for a shot)."""
        count = len(self.images) - self.shots
        is_anomaly = items < count
        rows = torch.where(is_anomaly, self.shots + items, (items - count) // self.per_shot)
        return rows, is_anomaly.long()


def synthesize_training_set(references: np.ndarray, method: str, per_shot: int, seed: int) -> TrainingSet:
    """[K, S, S, 3] uint8 shots -> each with ``per_shot`` anomalies, seeded by (seed, shot index)."""
    from ..synthesis import synthesize_shot_anomalies  # only fitting needs it (scipy, Poisson blending)

    drawn = [a for shot in synthesize_shot_anomalies(references, method, per_shot, seed) for a in shot]
    images = np.concatenate([references, np.stack([a.image for a in drawn])])
    masks = np.concatenate([np.zeros(references.shape[:3], dtype=bool), np.stack([a.mask for a in drawn])])
    return TrainingSet(images, masks, len(references))


# -- the detector ----------------------------------------------------------------------------

class PromptLearningDetector(Detector):
    """Text prompts (fixed or learned on k shots) scored against CLIP's image and patch embeddings.

    A subclass sets ``name``, ``display_name`` and :meth:`build_learner`; this class holds the
    training loop and the scoring. ``fit(FitData(reference_images=[K, 3, S, S], class_name,
    seed))`` learns from the shots (a learner without parameters only records the class);
    ``predict(images [B, 3, S, S], class_names)`` returns scores [B] and maps [B, S, S].
    """

    display_name: str = "prompt learner"

    def __init__(self, config: PromptScoringConfig, backbone: ClipBackbone | None = None):
        self.config = config
        self.backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size, config.device)
        self._transform = ImageTransform.for_backbone(self.backbone)
        self.map_layer = config.map_layer or self.backbone.num_layers
        self.learner: nn.Module | None = None
        self.class_name: str | None = None
        self.memory: torch.Tensor | None = None  # [K·N, D] normalized reference patches
        self.loss_history: list[float] = []
        self._text: dict[str, torch.Tensor] = {}  # per-class text of a fitted unconditional learner
        if not self.trains:
            self.learner = self.build_learner().to(config.device)

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    @property
    def trains(self) -> bool:
        """Whether ``fit`` learns prompts (False: a fixed template ensemble)."""
        return isinstance(self.config, PromptLearnerConfig)

    def build_learner(self) -> nn.Module:
        """The text/image prompting module (freshly initialized from the global RNG, which
        :meth:`fit` seeds)."""
        raise NotImplementedError

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, data: FitData) -> "PromptLearningDetector":
        """Learn the prompts of ``data.class_name`` from ``data.reference_images`` [K, 3, S, S]."""
        if data.reference_images is None or len(data.reference_images) == 0:
            raise ValueError(f"{self.display_name} is few-shot: fit(FitData(reference_images=[K, 3, S, S], "
                             "class_name=...)) with K >= 1")
        if data.reference_images.ndim != 4 or data.reference_images.shape[1] != 3:
            raise ValueError(f"{self.display_name}: reference_images must be [K, 3, S, S], got "
                             f"{list(data.reference_images.shape)}")
        if not data.class_name:
            raise ValueError(f"{self.display_name} needs the references' class name (FitData.class_name): its "
                             "text prompts name the object")
        with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
            torch.manual_seed(data.seed)
            if self.trains:
                self.learner = self.build_learner().to(self.config.device)
                self._train(data)
            self._text = {}
            self.class_name = data.class_name
            self.memory = self._reference_memory(data.reference_images) if self.config.reference_memory else None
        return self

    def _train(self, data: FitData) -> None:
        config, learner = self.config, self.learner
        references = self.transform.to_uint8(data.reference_images)
        training = synthesize_training_set(references, config.synthesis, config.anomalies_per_image, data.seed)
        shots = training.shots
        epochs = config.epochs_for(shots)
        pixel_loss = config.focal_weight > 0 or config.dice_weight > 0
        cached = None if learner.prompts_image else self._frozen_features(training, pixel_loss)
        parameters = [p for p in learner.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(data.seed)
        names = [data.class_name] * config.train_batch_size
        self.loss_history = []
        progress = tqdm(range(epochs), desc=f"{self.display_name} {data.class_name} {shots}-shot", leave=False)
        for epoch in progress:
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate_at(epoch, epochs)
            order = torch.randperm(len(training), generator=generator)
            losses = []
            for start in range(0, len(order), config.train_batch_size):
                items = order[start:start + config.train_batch_size]
                embedding, patches, labels, masks = self._batch(training, items, cached)
                text = learner.text_embeddings(names[:len(items)], embedding)
                loss = F.cross_entropy(state_logits(embedding, text, config.temperature), labels)
                if pixel_loss:
                    logits = upsample_patch_logits(state_logits(patches, text, config.temperature), config.image_size)
                    probabilities = logits.softmax(dim=1)
                    loss = loss + config.focal_weight * focal_loss(probabilities, masks) \
                        + config.dice_weight * dice_loss(probabilities[:, 1], masks)
                losses.append(gradient_step(optimizer, loss))
            self.loss_history.append(float(np.mean(losses)))
            progress.set_postfix(loss=f"{self.loss_history[-1]:.4f}")

    @torch.no_grad()
    def _frozen_features(self, training: TrainingSet, with_patches: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every training image through the frozen image tower once: embeddings [K + K·J, D] and,
        when pixel terms train, patch embeddings [K + K·J, N, D]."""
        embeddings, patches = [], []
        for start in range(0, len(training.images), self.config.batch_size):
            images = uint8_to_images(training.images[start:start + self.config.batch_size], self.transform,
                                     self.config.device)
            embedding, patch = self.learner.encode_images(images)
            embeddings.append(embedding.float())
            if with_patches:
                patches.append(patch.float())
        return torch.cat(embeddings), torch.cat(patches) if with_patches else None

    def _batch(self, training: TrainingSet, items: torch.Tensor, cached: tuple | None):
        """(embedding [b, D], patches [b, N, D] or None, labels [b], masks [b, S, S]) of some items."""
        device = self.config.device
        rows, labels = training.rows(items)
        masks = torch.from_numpy(training.masks[rows.numpy()]).to(device)
        if cached is not None:
            embeddings, patches = cached
            return embeddings[rows], None if patches is None else patches[rows], labels.to(device), masks
        embedding, patches = self.learner.encode_images(
            uint8_to_images(training.images[rows.numpy()], self.transform, device))
        return embedding.float(), patches.float(), labels.to(device), masks

    @torch.no_grad()
    def _reference_memory(self, references: torch.Tensor) -> torch.Tensor:
        """[K·N, D] normalized patch embeddings of the shots, with the learned image prompts if any."""
        chunks = [self.learner.encode_images(references[i:i + self.config.batch_size].to(self.config.device))[1]
                  for i in range(0, len(references), self.config.batch_size)]
        patches = torch.cat(chunks).float()
        return F.normalize(patches.reshape(-1, patches.shape[-1]), dim=-1)

    # -- predicting ------------------------------------------------------------------------

    def _class_names(self, images: torch.Tensor, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            if self.class_name is None:
                raise ValueError(f"{self.display_name} needs one class name per image (its text prompts name "
                                 "the object), or a fit on one class")
            return [self.class_name] * len(images)
        if len(class_names) != len(images):
            raise ValueError(f"{self.display_name}: got {len(class_names)} class names for {len(images)} images; "
                             "expected one per image")
        return list(class_names)

    def _text_for(self, names: list[str], embedding: torch.Tensor) -> torch.Tensor:
        """[B, 2, D]; a fixed (fitted, unconditional) text is computed once per class."""
        if self.learner.conditional:
            return self.learner.text_embeddings(names, embedding)
        for name in dict.fromkeys(names):
            if name not in self._text:
                self._text[name] = self.learner.text_embeddings([name], embedding[:1])[0].float()
        return torch.stack([self._text[name] for name in names])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] -> image scores [B] and anomaly maps [B, S, S] (abnormal probabilities)."""
        if self.learner is None:
            raise RuntimeError(f"{self.display_name} is few-shot: call fit(FitData(reference_images=..., "
                               "class_name=...)) before predict")
        names = self._class_names(images, class_names)
        config = self.config
        embedding, patches = self.learner.encode_images(images.to(config.device))
        embedding, patches = embedding.float(), patches.float()
        text = self._text_for(names, embedding)
        image_scores = state_logits(embedding, text, config.temperature).softmax(dim=-1)[:, 1]
        patch_scores = state_logits(patches, text, config.temperature).softmax(dim=-1)[..., 1]  # [B, N]
        if self.memory is not None:
            distance = memory_distance(patches, self.memory)
            patch_scores = (patch_scores + distance) / 2
            image_scores = (image_scores + distance.amax(dim=1)) / 2
        grid = self.backbone.grid_size
        maps = upsample_maps(patch_scores.reshape(-1, grid, grid), images.shape[-1])
        maps = gaussian_smooth(maps, config.gaussian_sigma, config.smoothing_boundary)
        return Prediction(image_scores=image_scores.float().cpu(), anomaly_maps=maps.float().cpu())
