"""AdaCLIP: hybrid learnable prompts in both CLIP encoders for zero-shot anomaly detection.

Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024, arXiv:2407.15795.

Pipeline (§4): a frozen CLIP whose first J layers in both encoders take hybrid prompts
(:mod:`clipad_lib.backbones.prompted`); a learnable linear projection (with bias) of the patch
tokens of four layers and of the image embedding; per-layer patch-text logits
``100 · patch · text`` (Eq. 4); anomaly maps upsampled bilinearly, and at test time the layers'
logits averaged before the softmax, then Gaussian smoothing (σ = 4); the image score from the
Hybrid Semantic Fusion embedding against the same text embeddings (§4.6–4.7).

Where the official code (which produced the released checkpoints) differs from the paper's
wording, the default follows the code and the paper is an option:

* text prompt placement (``text_placement``): see the prompted-transformer module;
* HSF (``hsf_centroids``): k-means on the top 5·K patches by abnormal probability with the
  layers' projected tokens concatenated, then the mean of *all* K centroids (``"all"``);
  ``"top"`` keeps only the cluster with the highest mean anomaly score, as §4.6 describes.
  Empty clusters are left out of the mean (the official code would average in a NaN);
* the image embedding is ``normalize(0.2 · HSF + 0.8 · CLS)``;
* OpenAI weights run with exact GELU (``quick_gelu=False``), as the official model code does;
* positional embeddings resized to 518 px without antialiasing (``pos_embed_antialias=False``):
  the official code's own bicubic resize, class token kept, ``align_corners=False``;
* maps smoothed with σ = 4 and scipy's ``reflect`` boundary (``smoothing_boundary``), as its
  ``gaussian_filter`` call; torchvision's blur (``"mirror"``) differs within 4σ of the border;
* HSF's k-means (``kmeans``): ``"batched"`` (default) clusters the whole batch at once with a
  seeded k-means++; ``"sklearn"`` is the official ``KMeans(n_clusters=K, n_init="auto")`` per image,
  given the run's seed as ``random_state`` (the official code passes none, so its own scores move
  from run to run). Measured by ``scripts/fidelity_departures.py`` on 48 smoke images (tiny CLIP,
  128 px, K = 5, untrained prompts): the official recipe's image score moves by up to 0.054 across
  five random states (scores span 0.75); the batched k-means lies within 0.022 of their mean —
  inside the official recipe's own spread, which is the honest tolerance for HSF rows;
* the official code casts prompt tokens to fp16 (``.half()``) and runs under autocast; here
  everything is fp32 (a side-by-side run of the official code measured maps moving by 6.3e-5 and
  scores by 8.6e-5 — below the 1e-4 the tables print, so there is no switch).

Unlike the official trainer we train at any batch size (its dynamic text prompts only work at
batch size 1; here every image conditions its own text embeddings) and never select an epoch
on test data: the model after the last epoch is the model.
"""
from __future__ import annotations

import contextlib
import io
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import CheckpointError, architecture, build_clip, check_state_dict
from ..backbones.checkpoint_files import read_checkpoint
from ..backbones.prompted import TEXT_PLACEMENTS, PromptConfig, PromptedCLIP
from ..data.auxiliary import AuxiliaryTrainingSet, ZeroShotViolation, auxiliary_datasets, check_zero_shot
from ..data.transforms import ImageTransform
from ..io import atomic_write
from ..losses import dice_loss, focal_loss
from ..seeding import seeded
from ..training import train_epochs
from ..validation import Each, Interval, Options, ValidatedConfig
from .base import (BACKBONE_CONSTRAINTS, LAYERS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY, Detector, FitData,
                   SMOOTHING_BOUNDARIES, Prediction, check_layers, gaussian_smooth, upsample_patch_logits)
from .registry import register_method
from .kmeans import batched_kmeans
from .text_prompts import ADACLIP_ENSEMBLE, full_precision, prompt_class_name, state_embeddings

IMAGE_SCORES = ("hsf", "cls", "max")
KMEANS = ("batched", "sklearn")
HSF_CENTROIDS = ("all", "top")
PROJECTIONS = ("learnable", "frozen")
CHECKPOINT_FORMAT = "clipad-adaclip-v1"


@dataclass(frozen=True)
class AdaCLIPConfig(ValidatedConfig):
    backbone: str = "ViT-L-14-336"       # §5.1 Implementation Details
    pretrained: str | None = "openai"     # §5.1
    image_size: int = 518                 # §5.1: all images resized to 518x518
    layers: tuple[int, ...] = (6, 12, 18, 24)  # §5.1: patch embeddings of the 6th, 12th, 18th, 24th layers
    prompt_length: int = 5                # M, §5.1
    prompt_depth: int = 4                 # J, §5.1
    static_prompts: bool = True           # hybrid = static + dynamic (§4.3; Tab. 3 ablates each)
    dynamic_prompts: bool = True
    prompt_image: bool = True             # prompting encoders (supp. Tab. 2)
    prompt_text: bool = True
    text_placement: str = "official"      # official code; "paper" = Eq. 1–2 wording
    projection: str = "learnable"         # linear with bias (§4.4); "frozen" = CLIP's own ln_post+proj (supp. Tab. 5)
    image_score: str = "hsf"              # "hsf" (§4.6), "max" of the map (Tab. 4 w/o HSF), "cls" (official use_hsf=False)
    hsf_clusters: int = 20                # K (supp. §2.2, Tab. 3)
    hsf_top_factor: int = 5               # official code: k-means on the top 5·K patches
    hsf_centroids: str = "all"            # official code; "top" = highest-scoring cluster (§4.6)
    hsf_alpha: float = 0.2                # official code: normalize(0.2·HSF + 0.8·CLS)
    gaussian_sigma: float = 4.0           # official test code (gaussian_filter, sigma=4)
    smoothing_boundary: str = "reflect"   # official: scipy's gaussian_filter default (edge repeated)
    kmeans: str = "batched"               # HSF clustering: seeded batched k-means++; "sklearn" = the official call
    pos_embed_antialias: bool = False     # official: its own bicubic resize (align_corners=False), no antialias
    epochs: int = 5                       # official train.py
    learning_rate: float = 0.01           # official train.py
    betas: tuple[float, float] = (0.5, 0.999)  # official trainer (AdamW)
    batch_size: int = 1                   # official train.py (its code only runs at 1; ours runs at any size)
    mosaic_prob: float = 0.0              # official AdaCLIP data path uses none; APRIL-GAN uses 0.2
    quick_gelu: bool = False              # official model code runs OpenAI weights with exact GELU
    device: str = "cpu"
    seed: int = 0

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "layers": [LAYERS], "prompt_length": [Interval(int, 0, None)],
        "prompt_depth": [Interval(int, 0, None)], "static_prompts": [bool], "dynamic_prompts": [bool],
        "prompt_image": [bool], "prompt_text": [bool], "text_placement": [Options(TEXT_PLACEMENTS)],
        "projection": [Options(PROJECTIONS)], "image_score": [Options(IMAGE_SCORES)], "hsf_clusters": [POSITIVE_INT],
        "hsf_top_factor": [POSITIVE_INT], "hsf_centroids": [Options(HSF_CENTROIDS)], "hsf_alpha": [PROBABILITY],
        "gaussian_sigma": [NON_NEGATIVE], "smoothing_boundary": [Options(SMOOTHING_BOUNDARIES)],
        "kmeans": [Options(KMEANS)], "pos_embed_antialias": [bool], "epochs": [POSITIVE_INT],
        "learning_rate": [POSITIVE],
        "betas": [Each(Interval(float, 0, 1, closed="left"), length=2)], "batch_size": [POSITIVE_INT],
        "mosaic_prob": [PROBABILITY], "quick_gelu": [bool], "seed": [int],
    }

    def check(self):
        check_layers(self, "layers")
        depth = architecture(self.backbone).layers
        if self.prompt_depth > depth:
            self.fail("prompt_depth", f"{self.backbone} has {depth} image layers")

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(length=self.prompt_length, depth=self.prompt_depth, static=self.static_prompts,
                            dynamic=self.dynamic_prompts, image=self.prompt_image, text=self.prompt_text,
                            text_placement=self.text_placement)


def sklearn_kmeans_labels(features: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """The official HSF clustering: scikit-learn's ``KMeans(n_clusters, n_init="auto")`` on each
    image alone (the official code passes no ``random_state``; here it is ``seed``, so a run is
    repeatable). features [B, k, C] -> labels [B, k] int64 on the features' device."""
    from sklearn.cluster import KMeans

    labels = [KMeans(n_clusters=clusters, n_init="auto", random_state=seed).fit_predict(f.cpu().double().numpy())
              for f in features]
    return torch.as_tensor(np.stack(labels), dtype=torch.long, device=features.device)


@dataclass(frozen=True)
class _HSFAssignment:
    """What HSF's clustering step produced for one batch (see :func:`_hsf_assignment`)."""

    abnormal: torch.Tensor   # [B, N] abnormal probability of every patch (softmax of the layers' mean logits)
    indices: torch.Tensor    # [B, k] the top-k patches by ``abnormal``, k = min(N, top_factor · K)
    selected: torch.Tensor   # [B, L, k, D] their projected tokens, per layer
    labels: torch.Tensor     # [B, k] int64 cluster of each selected patch
    one_hot: torch.Tensor    # [B, k, K'] K' = min(K, k)
    sizes: torch.Tensor      # [B, K'] members per cluster

    def cluster_scores(self) -> torch.Tensor:
        """[B, K'] mean ``abnormal`` of each cluster's members (0 for an empty cluster)."""
        return (self.one_hot * self.abnormal.gather(1, self.indices)[..., None]).sum(dim=1) / self.sizes.clamp_min(1)

    def top_clusters(self) -> torch.Tensor:
        """[B] the non-empty cluster with the highest mean abnormal probability (what ``"top"`` keeps)."""
        return self.cluster_scores().masked_fill(~(self.sizes > 0), -1.0).argmax(dim=1)


def _hsf_assignment(patch_tokens: Sequence[torch.Tensor], layer_logits: Sequence[torch.Tensor], clusters: int,
                    top_factor: int, seed: int, kmeans: str) -> _HSFAssignment:
    """HSF's selection and clustering, shared by :func:`hybrid_semantic_fusion` and
    :meth:`AdaCLIPDetector.hsf_clusters`: the top ``top_factor · K`` patches by abnormal
    probability, clustered on the layers' projected tokens concatenated ([B, k, L·D])."""
    abnormal = torch.softmax(torch.stack(list(layer_logits)).mean(dim=0), dim=-1)[..., 1]  # [B, N]
    top = min(abnormal.shape[1], top_factor * clusters)
    indices = abnormal.topk(top, dim=1).indices  # [B, k]
    selected = torch.stack([t.gather(1, indices[..., None].expand(-1, -1, t.shape[-1])) for t in patch_tokens],
                           dim=1)  # [B, L, k, D]
    batch, layers, _, dim = selected.shape
    features = selected.permute(0, 2, 1, 3).reshape(batch, top, layers * dim)
    if kmeans == "sklearn":
        labels = sklearn_kmeans_labels(features.detach(), min(clusters, top), seed)
    else:
        labels, _ = batched_kmeans(features.detach(), min(clusters, top), seed=seed)
    one_hot = F.one_hot(labels, min(clusters, top)).to(selected.dtype)  # [B, k, K]
    return _HSFAssignment(abnormal=abnormal, indices=indices, selected=selected, labels=labels, one_hot=one_hot,
                          sizes=one_hot.sum(dim=1))


def hybrid_semantic_fusion(patch_tokens: Sequence[torch.Tensor], layer_logits: Sequence[torch.Tensor],
                           clusters: int, top_factor: int, centroids: str, seed: int,
                           kmeans: str = "batched") -> torch.Tensor:
    """The HSF embedding of every image (AdaCLIP §4.6, supp. §2.2, official code).

    Args:
        patch_tokens: per layer [B, N, D] projected, normalized patch tokens.
        layer_logits: per layer [B, N, 2] patch-text logits (normal, abnormal).
        clusters: K; top_factor: k-means runs on the top ``top_factor · K`` patches.
        centroids: "all" (mean of all non-empty cluster centroids) or "top" (the cluster with the
            highest mean abnormal probability).
        kmeans: "batched" (:func:`batched_kmeans`, every image of the batch at once on its device)
            or "sklearn" (:func:`sklearn_kmeans_labels`, the official recipe).
    Returns:
        [B, D] normalized. Gradients flow to the tokens (the clustering itself is not differentiated).
    """
    assignment = _hsf_assignment(patch_tokens, layer_logits, clusters, top_factor, seed, kmeans)
    selected, one_hot, sizes = assignment.selected, assignment.one_hot, assignment.sizes
    batch, layers = selected.shape[:2]
    sums = torch.einsum("bkc,blkd->bcd", one_hot, selected)  # sum over members and layers: [B, K, D]
    centres = sums / (sizes * layers).clamp_min(1)[..., None]
    present = sizes > 0
    if centroids == "all":
        fused = (centres * present[..., None]).sum(dim=1) / present.sum(dim=1, keepdim=True)
    else:
        fused = centres[torch.arange(batch, device=centres.device), assignment.top_clusters()]
    return F.normalize(fused, dim=-1)


@dataclass(frozen=True)
class HSFView:
    """What HSF clustered, for figures (supp. Fig. 2); from :meth:`AdaCLIPDetector.hsf_clusters`.

    HSF clusters once per image, on the configured layers' projected patch tokens concatenated
    (as the official code does; the supplementary text speaks of "individual hierarchies"), so
    there is one clustering for all layers, not one per layer. ``layers`` names them.

    Attributes (all on the CPU):
        labels: [B, N] int64, the cluster (0..K-1) of every patch, row-major over the
            ``grid x grid`` patch grid; -1 for patches outside the ``top`` that HSF clusters.
        cluster_scores: [B, K] mean of ``patch_scores`` over each cluster's members; NaN for a
            cluster that came out empty (HSF leaves those out).
        cluster_sizes: [B, K] int64 members per cluster (they sum to ``top``).
        patch_scores: [B, N] the abnormal probability HSF ranks and scores patches by: the softmax
            of the layers' mean patch logits at patch resolution (predict's maps upsample the
            logits first and smooth after, so they agree only roughly).
        grid: side of the patch grid (N = grid²).
        top: patches clustered per image, min(N, hsf_top_factor · hsf_clusters).
        layers: the 1-based layer numbers whose tokens were concatenated.
    K is min(hsf_clusters, top).
    """

    labels: torch.Tensor
    cluster_scores: torch.Tensor
    cluster_sizes: torch.Tensor
    patch_scores: torch.Tensor
    grid: int
    top: int
    layers: tuple[int, ...]

    @property
    def clusters(self) -> int:
        """K, the number of clusters."""
        return self.cluster_scores.shape[1]

    @property
    def top_clusters(self) -> torch.Tensor:
        """[B] int64 the non-empty cluster with the highest mean score (the one ``hsf_centroids="top"`` keeps)."""
        return self.cluster_scores.nan_to_num(-1.0).argmax(dim=1)

    def label_grid(self) -> torch.Tensor:
        """[B, grid, grid] int64 ``labels`` on the patch grid."""
        return self.labels.reshape(-1, self.grid, self.grid)

    def score_grid(self) -> torch.Tensor:
        """[B, grid, grid] each patch's cluster mean score; NaN for patches HSF did not cluster."""
        padded = torch.cat([self.cluster_scores, torch.full_like(self.cluster_scores[:, :1], float("nan"))], dim=1)
        index = torch.where(self.labels >= 0, self.labels, self.clusters)
        return padded.gather(1, index).reshape(-1, self.grid, self.grid)


class AdaCLIPModel(nn.Module):
    """The learnable parts around a frozen CLIP: prompts, projections. Shapes in :meth:`forward`."""

    def __init__(self, config: AdaCLIPConfig, backbone=None):
        super().__init__()
        self.config = config
        backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size, config.device,
                                          quick_gelu=config.quick_gelu,
                                          pos_embed_antialias=config.pos_embed_antialias)
        backbone.layer_indices(config.layers)  # an unknown layer fails here, naming the valid range
        self.prompted = PromptedCLIP(backbone, config.prompt_config())
        embed_dim = backbone.embed_dim
        if config.projection == "learnable":
            self.patch_projection = nn.ModuleList(nn.Linear(backbone.width, embed_dim) for _ in config.layers)
            self.cls_projection = nn.Linear(embed_dim, embed_dim)
        else:
            self.patch_projection = None
            self.cls_projection = None
        self.ensemble = ADACLIP_ENSEMBLE
        self._text_cache: dict[str, torch.Tensor] = {}
        self._token_cache: dict[tuple, torch.Tensor] = {}  # (ensemble, class name, device) -> token ids [P, L]
        self.to(config.device)

    @property
    def backbone(self):
        """The frozen CLIP (registered once, inside the prompted encoders)."""
        return self.prompted.backbone

    def clear_text_cache(self) -> None:
        """Forget cached text embeddings (after training or loading prompts)."""
        self._text_cache = {}

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the learnable tensors (the frozen backbone is not saved)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("prompted.backbone.")}

    def _project_patches(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.patch_projection is None:
            return [F.normalize(self.backbone.project_tokens(t), dim=-1) for t in tokens]
        return [F.normalize(linear(t), dim=-1) for linear, t in zip(self.patch_projection, tokens)]

    def _tokens(self, name: str, device: torch.device) -> torch.Tensor:
        """Token ids [P, L] of the ensemble's sentences for one class, tokenized once per class
        (they depend on nothing learned; tokenizing costs as much as a tiny CLIP's forward)."""
        key = (self.ensemble, name, str(device))
        if key not in self._token_cache:
            sentences = self.ensemble.sentences(prompt_class_name(name))
            self._token_cache[key] = self.backbone.tokenizer(sentences).to(device)
        return self._token_cache[key]

    def _text(self, class_names: Sequence[str], dynamic_source: torch.Tensor | None) -> torch.Tensor:
        """[B, 2, D] normalized (normal, abnormal) text embeddings, one pair per image."""
        device = next(self.parameters()).device
        per_image = self.prompted.text_dynamic is not None
        parts, order = [], []  # per class its rows' [n, 2, D] embeddings, and those rows
        for name in sorted(set(class_names)):
            rows = [i for i, n in enumerate(class_names) if n == name]
            if not per_image and not self.training and name in self._text_cache:
                embedding = self._text_cache[name]
            else:
                tokens = self._tokens(name, device)
                source = dynamic_source[rows] if per_image else None
                cache = not per_image and not self.training
                with full_precision(device) if cache else contextlib.nullcontext():  # cached: never under autocast
                    sentences = self.prompted.encode_text(tokens, dynamic_source=source)
                    embedding = state_embeddings(sentences, self.ensemble.normal_count)  # [2, D] or [n, 2, D]
                if cache:
                    self._text_cache[name] = embedding
            parts.append(embedding if per_image else embedding.expand(len(rows), -1, -1))
            order.extend(rows)
        stacked = torch.cat(parts)  # rows in class order
        if order == list(range(len(order))):
            return stacked
        return stacked[torch.as_tensor(order, device=stacked.device).argsort()]

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, list[torch.Tensor]]:
        """images [B, 3, S, S] -> (the dynamic prompts' source [B, D] or None, the pooled image
        token [B, D], per configured layer the projected, L2-normalized patch tokens [B, N, D])."""
        dynamic_source = self.prompted.frozen_image_embedding(images) if self.config.dynamic_prompts else None
        pooled, tokens = self.prompted.encode_image(images, self.config.layers, dynamic_source)
        return dynamic_source, pooled, self._project_patches(tokens)

    def encode(self, images: torch.Tensor, class_names: Sequence[str]) -> dict[str, torch.Tensor | list]:
        """Everything before HSF: ``patch_tokens`` (per layer [B, N, D]), ``layer_logits`` (per layer
        [B, N, 2], Eq. 4), ``image_embedding`` [B, D] (projected CLS, normalized) and ``text`` [B, 2, D]."""
        dynamic_source, pooled, patch_tokens = self.image_features(images)
        image_embedding = F.normalize(self.cls_projection(pooled) if self.cls_projection is not None else pooled,
                                      dim=-1)
        text = self._text(class_names, dynamic_source)  # [B, 2, D]
        layer_logits = [100.0 * torch.bmm(t, text.transpose(1, 2)) for t in patch_tokens]  # [B, N, 2] each
        return {"patch_tokens": patch_tokens, "layer_logits": layer_logits, "image_embedding": image_embedding,
                "text": text}

    def forward(self, images: torch.Tensor, class_names: Sequence[str]) -> dict[str, torch.Tensor | list]:
        """images [B, 3, S, S] -> per-layer logits [B, N, 2], image probabilities [B, 2]."""
        config = self.config
        encoded = self.encode(images, class_names)
        patch_tokens, layer_logits, text = encoded["patch_tokens"], encoded["layer_logits"], encoded["text"]
        image_embedding = encoded["image_embedding"]
        if config.image_score == "hsf":
            fused = hybrid_semantic_fusion(patch_tokens, layer_logits, config.hsf_clusters, config.hsf_top_factor,
                                           config.hsf_centroids, config.seed, config.kmeans)
            image_embedding = F.normalize(config.hsf_alpha * fused + (1 - config.hsf_alpha) * image_embedding, dim=-1)
        image_probabilities = torch.softmax(100.0 * torch.bmm(image_embedding[:, None], text.transpose(1, 2))[:, 0],
                                            dim=-1)
        return {"layer_logits": layer_logits, "image_probabilities": image_probabilities}


_OFFICIAL_KEYS = (
    (r"clip_model\.text_prompter\.static_prompts\.(\d+)", r"prompted.text_static.\1"),
    (r"clip_model\.visual_prompter\.static_prompts\.(\d+)", r"prompted.image_static.\1"),
    (r"clip_model\.patch_token_layer\.head\.(\d+)\.(weight|bias)", r"patch_projection.\1.\2"),
    (r"clip_model\.cls_token_layer\.head\.0\.(weight|bias)", r"cls_projection.\1"),
    (r"clip_model\.dynamic_visual_prompt_generator\.head\.(\d+)\.(weight|bias)", r"prompted.image_dynamic.head.\1.\2"),
    (r"clip_model\.dynamic_text_prompt_generator\.head\.(\d+)\.(weight|bias)", r"prompted.text_dynamic.head.\1.\2"),
)


def map_official_adaclip_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an official AdaCLIP checkpoint (``pretrained_*.pth``) to ours.

    A key that matches no rule is an error naming it.
    """
    mapped = {}
    for key, value in state_dict.items():
        for pattern, replacement in _OFFICIAL_KEYS:
            if re.fullmatch(pattern, key):
                mapped[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in the official AdaCLIP checkpoint; "
                                  f"expected keys under clip_model.{{text_prompter, visual_prompter, patch_token_layer, "
                                  "cls_token_layer, dynamic_visual_prompt_generator, dynamic_text_prompt_generator}")
    return mapped


@register_method("adaclip", display_name="AdaCLIP", config=AdaCLIPConfig, fits_on=("auxiliary",),
                 paper="Cao et al., AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly "
                       "Detection, ECCV 2024, arXiv:2407.15795",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64,
                                "layers": (2, 4, 6, 8), "epochs": 1, "batch_size": 4, "learning_rate": 0.001,
                                "hsf_clusters": 2})
class AdaCLIPDetector(Detector):
    """AdaCLIP behind the fit/predict protocol: ``fit`` trains on auxiliary data, ``predict`` is zero-shot."""

    name = "adaclip"

    def __init__(self, config: AdaCLIPConfig = AdaCLIPConfig(), backbone=None):
        self.config = config
        with seeded(config.seed):  # the learnable parts' initialisation, without touching the caller's RNG
            self.model = AdaCLIPModel(config, backbone)
        self._transform = ImageTransform.for_backbone(self.model.backbone)
        self.trained_categories: list[str] = []
        self.loss_history: list[float] = []

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    @property
    def backbone(self):
        """The frozen CLIP inside the prompted encoders."""
        return self.model.backbone

    # -- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict) -> torch.Tensor:
        device = self.config.device
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        labels = torch.as_tensor(batch["label"], device=device)
        output = self.model(images, list(batch["category"]))
        loss = focal_loss(output["image_probabilities"], labels)
        for logits in output["layer_logits"]:
            probabilities = torch.softmax(upsample_patch_logits(logits, images.shape[-1]), dim=1)
            loss = loss + focal_loss(probabilities, masks) + dice_loss(probabilities[:, 1], masks) \
                + dice_loss(probabilities[:, 0], 1 - masks)
        return loss

    def fit(self, data: FitData) -> "AdaCLIPDetector":
        """Train the prompts and projections on ``data.auxiliary`` (an AnomalyDataset or a list of them).

        Shows a progress bar with the running loss; ``loss_history`` keeps the mean loss per epoch.
        """
        datasets = auxiliary_datasets(data.auxiliary, "AdaCLIPDetector")
        config = self.config
        with seeded(config.seed):
            training_set = AuxiliaryTrainingSet(datasets, self.transform, config.mosaic_prob, config.seed)
            parameters = [p for p in self.model.parameters() if p.requires_grad]
            if not parameters:
                raise ValueError("nothing to train: prompts are off and the projection is frozen")
            optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=config.betas)
            self.model.train()
            self.model.clear_text_cache()
            start = time.perf_counter()
            self.loss_history = train_epochs(self._loss, optimizer, training_set, epochs=config.epochs,
                                             batch_size=config.batch_size, seed=config.seed, desc="AdaCLIP")
        self.model.eval()
        self.model.clear_text_cache()
        self.trained_categories = training_set.categories
        self.fit_seconds = time.perf_counter() - start
        return self

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] and their category names -> scores [B] and maps [B, S, S]."""
        if class_names is None or len(class_names) != len(images):
            raise ValueError("AdaCLIP needs one class name per image (its text prompts name the object)")
        try:
            check_zero_shot(self.trained_categories, class_names)
        except ZeroShotViolation as exc:
            raise ZeroShotViolation(f"refusing to predict: {exc}") from None
        self.model.eval()
        output = self.model(images.to(self.config.device), list(class_names))
        size = images.shape[-1]
        logits = torch.stack([upsample_patch_logits(l, size) for l in output["layer_logits"]]).mean(dim=0)
        maps = gaussian_smooth(torch.softmax(logits, dim=1)[:, 1], self.config.gaussian_sigma,
                               self.config.smoothing_boundary)
        if self.config.image_score == "max":
            scores = maps.flatten(1).max(dim=1).values
        else:
            scores = output["image_probabilities"][:, 1]
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    # -- analysis views (AdaCLIP Fig. 4, Fig. 7, supp. Fig. 2) ----------------------------------

    def _check_view_inputs(self, images: torch.Tensor, class_names: Sequence[str] | None, required: bool) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected images [B, 3, S, S] (detector.transform.image of each sample), got {shape}")
        if class_names is None and not required:
            return
        if class_names is None or isinstance(class_names, str) or len(class_names) != len(images):
            raise ValueError("AdaCLIP needs one class name per image (its text prompts name the object)")

    @torch.no_grad()
    def patch_embeddings(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[int, torch.Tensor]:
        """The patch embeddings the anomaly maps are computed from (what Fig. 4 and Fig. 7 plot).

        Args:
            images: [B, 3, S, S], as :attr:`transform` makes them.
            class_names: optional, one per image (checked when given). The image encoder's prompts
                depend on the image only, so the embeddings do not depend on the names.
        Returns:
            {layer: [B, N, D]} for each configured layer (1-based layer numbers, ``config.layers``):
            the patch tokens after the projection, L2-normalized, on the CPU; N = grid² patches in
            row-major order, D the CLIP embedding width. Each map is ``100 · embedding · text``.
        Unlike :meth:`predict` there is no zero-shot check: nothing is scored, and Fig. 7 plots the
        training data's embeddings too.
        """
        self._check_view_inputs(images, class_names, required=False)
        self.model.eval()
        _, _, patch_tokens = self.model.image_features(images.to(self.config.device))
        return {layer: tokens.float().cpu() for layer, tokens in zip(self.config.layers, patch_tokens)}

    @torch.no_grad()
    def hsf_clusters(self, images: torch.Tensor, class_names: Sequence[str]) -> HSFView:
        """What Hybrid Semantic Fusion clusters for these images (supp. Fig. 2): :class:`HSFView`.

        The same selection and k-means as :meth:`predict` (``hsf_clusters``, ``hsf_top_factor``,
        ``kmeans``, ``seed`` of the config), so for the same batch the clusters are the ones its
        image score was fused from. The batched k-means clusters a batch's images together (shared
        random draws and stopping rule), so pass the batch that was predicted to see exactly its
        clusters. With ``image_score`` other than "hsf", predict runs no HSF; the view shows what HSF
        would cluster. images [B, 3, S, S]; class_names one per image. No zero-shot check.
        """
        self._check_view_inputs(images, class_names, required=True)
        self.model.eval()
        config = self.config
        encoded = self.model.encode(images.to(config.device), list(class_names))
        assignment = _hsf_assignment(encoded["patch_tokens"], encoded["layer_logits"], config.hsf_clusters,
                                     config.hsf_top_factor, config.seed, config.kmeans)
        batch, patches = assignment.abnormal.shape
        labels = torch.full((batch, patches), -1, dtype=torch.long, device=assignment.labels.device)
        labels.scatter_(1, assignment.indices, assignment.labels)
        sizes = assignment.sizes.round().long()
        scores = assignment.cluster_scores().masked_fill(sizes == 0, float("nan"))
        return HSFView(labels=labels.cpu(), cluster_scores=scores.float().cpu(), cluster_sizes=sizes.cpu(),
                       patch_scores=assignment.abnormal.float().cpu(), grid=self.backbone.grid_size,
                       top=assignment.indices.shape[1], layers=tuple(config.layers))

    # -- checkpoints --------------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """{"original": parameters of the CLIP model, "added": parameters AdaCLIP learns (static
        prompts, dynamic-prompt generators, projection)} — AdaCLIP Tab. 6's two sizes, as counts."""
        original = sum(p.numel() for p in self.backbone.parameters())
        added = sum(v.numel() for v in self.model.learnable_state_dict().values())
        return {"original": original, "added": added}

    def save_checkpoint(self, path: str | Path) -> Path:
        """Save the learnable parameters only (plus the config and the training categories)."""
        buffer = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(self.config),
                    "trained_categories": self.trained_categories,
                    "state_dict": self.model.learnable_state_dict()}, buffer)
        return atomic_write(path, buffer.getvalue())

    def _load_learnable(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        check_state_dict(self.model.learnable_state_dict(), state_dict, source)
        self.model.load_state_dict(state_dict, strict=False)
        self.model.clear_text_cache()

    def load_checkpoint(self, path: str | Path) -> "AdaCLIPDetector":
        """Load a checkpoint written by :meth:`save_checkpoint`; a wrong tensor is named."""
        payload = read_checkpoint(path)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a clipad AdaCLIP checkpoint; for the authors' "
                                  "pretrained_*.pth files use load_official_checkpoint")
        self._load_learnable(payload["state_dict"], str(path))
        self.trained_categories = list(payload.get("trained_categories", []))
        return self

    def load_official_checkpoint(self, path: str | Path, trained_categories: Sequence[str] = ()) -> "AdaCLIPDetector":
        """Load an official AdaCLIP release (``pretrained_mvtec_colondb.pth``, ...) by explicit key mapping.

        ``trained_categories`` names what it was trained on, so zero-shot use can be enforced.
        """
        state_dict = read_checkpoint(path)
        self._load_learnable(map_official_adaclip_keys(state_dict), str(path))
        self.trained_categories = list(trained_categories)
        return self
