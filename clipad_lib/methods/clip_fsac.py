"""CLIP-FSAC++: few-shot anomaly classification with adapters and an Anomaly Descriptor.

Zuo et al., "CLIP-FSAC++: Few-Shot Anomaly Classification with Anomaly Descriptor Based on
CLIP" (2024). Frozen OpenCLIP encoders; trained on the k normal shots and synthetic anomalies
made from them (random perturbation or NSA, :mod:`clipad_lib.synthesis`):

* F = the [CLS] image embedding (Eq. 2); T+, T− = averages of the text embeddings of WinCLIP's
  compositional prompt ensemble (Eq. 3);
* adapters with residual ratios: AF = α1·A_f(F) + α2·F, AT = β1·A_g(T) + β2·T (Eq. 4–5); A_f is
  two MLPs, A_g one (§IV-A3), each MLP C → 4C → C with GELU, then a linear layer (official code);
* Anomaly Descriptor: ψ = [AT+; AT−]; TF = Linear(softmax(F ψᵀ/√C) ψ) (image-to-text, Eq. 7);
  VT = Linear(softmax(ψ TFᵀ/√C) TF) (text-to-image, Eq. 8); CF = AF + TF, CT = ψ + γ1·VT (Eq. 9);
* loss L_t2i + L_i2t + γ2·L_ce (Eq. 10–13); score AS = S−/(S− + S+) with a softmax over the two
  texts at temperature τ (Eq. 14–16); gradient map |∂AS/∂x| averaged over channels (Eq. 17).

Where the paper is silent the official code (Jay-zzcoder/clip-fsac-) gives the value; where
the two differ the paper is followed and the difference is a config switch or a note:

* the code feeds the *original* T to the descriptor, the paper the adapted ψ (``descriptor_text``);
* the code's contrastive terms use CT and a temperature 0.99; the paper's use AT and plain
  cosine — followed here (``contrastive_temperature`` = 1);
* the code applies cross-entropy to softmax probabilities (a second softmax); here it is applied
  to the logits s(CF, CT)/τ, which is what Eq. 12 describes;
* the code draws one fresh anomaly per image per epoch; here ``anomalies_per_image`` anomalies
  are drawn once per image (seeded) and epoch e uses the (e mod J)-th, so a frozen encoder
  embeds each of them once (:class:`~clipad_lib.feature_cache.FeatureCache`);
* the text-to-image attention attends over the images of the batch. At test time the code's
  batch is 16 test images, so one image's score depends on the others; here each test image
  attends to itself alone (the code's result at test batch size 1);
* the code keeps the epoch with the best *test* AUROC; here the model after the last epoch is
  used — nothing is selected on test data.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..backbones import build_clip
from ..data.transforms import ImageTransform
from ..feature_cache import FeatureCache, encode_in_fixed_batches, tensor_digest
from ..losses import cross_modal_contrastive
from ..training import gradient_step
from ..validation import Each, Options, ValidatedConfig
from .base import BACKBONE_CONSTRAINTS, NON_NEGATIVE, POSITIVE, POSITIVE_INT, Detector, FitData, Prediction
from .registry import register_method
from .text_prompts import (ADACLIP_ENSEMBLE, APRILGAN_ENSEMBLE, WINCLIP_ENSEMBLE, PromptEnsemble,
                           prompt_class_name)

# Fig. 11 compares text prompts. "cpe" is WinCLIP's compositional prompt ensemble (the paper's
# "Ours"), "initial" CLIP's "a photo of a [cls]." / "a photo of a damaged [cls]." (the paper's
# "Initial"); the paper does not list its other eight variants, so the rest are the ensembles
# of the other methods in this workbook and the CPE states without templates.
PROMPT_VARIANTS: dict[str, PromptEnsemble] = {
    "cpe": WINCLIP_ENSEMBLE,
    "initial": PromptEnsemble(("a photo of a {}.",), normal_states=("{}",), abnormal_states=("damaged {}",)),
    "cpe_states_only": PromptEnsemble(("{}",), abnormal_states=WINCLIP_ENSEMBLE.abnormal_states),
    "aprilgan": APRILGAN_ENSEMBLE,
    "adaclip": ADACLIP_ENSEMBLE,
}

# §IV-A3: batch sizes for 1/2/4/8 shots, and the per-dataset residual ratios, γ1 and synthesis.
BATCH_SIZES = {"mvtec": {1: 1, 2: 2, 4: 2, 8: 2}, "visa": {1: 1, 2: 1, 4: 2, 8: 2}}
DATASET_DEFAULTS = {
    "mvtec": {"alpha": (0.4, 0.6), "beta": (0.4, 0.6), "gamma1": 0.01, "synthesis": "random_perturbation"},
    "visa": {"alpha": (0.1, 0.9), "beta": (0.1, 0.9), "gamma1": 0.7, "synthesis": "nsa"},
}
LOSS_CHOICES = ("both", "contrastive", "cross_entropy")  # Tab. V rows
OPTIMIZERS = ("adam", "sgd", "adamw")                   # Fig. 8


@dataclass(frozen=True)
class CLIPFSACConfig(ValidatedConfig):
    backbone: str = "ViT-B-16-plus-240"        # §IV-A3 OpenCLIP; official train.py CLIP_AD
    pretrained: str | None = "laion400m_e31"   # §IV-A3 LAION-400M; official train.py
    image_size: int = 240                      # official train.sh --image_size 240
    dataset_preset: str = "mvtec"              # which §IV-A3 batch-size table applies
    synthesis: str = "random_perturbation"     # §IV-A3: random perturbation on MVTec AD, NSA on VisA
    anomalies_per_image: int = 100             # one per epoch, as the official loader draws a new one each epoch
    alpha: tuple[float, float] = (0.4, 0.6)    # §IV-A3 (MVTec AD; VisA 0.1, 0.9), Eq. 4
    beta: tuple[float, float] = (0.4, 0.6)     # §IV-A3 (MVTec AD; VisA 0.1, 0.9), Eq. 5
    gamma1: float = 0.01                       # §IV-A3 (MVTec AD; VisA 0.7), Eq. 9
    gamma2: float = 0.7                        # §IV-A3 (both datasets), Eq. 13
    temperature: float = 0.07                  # τ of Eq. 14–15: the paper gives none; official compute_score
    contrastive_temperature: float = 1.0       # Eq. 10–11 use plain cosine similarity
    image_learning_rate: float = 5e-4          # §IV-A3 (image adapter; the descriptor trains with it, as in the code)
    text_learning_rate: float = 1e-4           # §IV-A3 (text adapter)
    epochs: int = 100                          # §IV-A3
    batch_size: int | None = None              # None: §IV-A3's table for the shot count and dataset_preset
    optimizer: str = "adam"                    # §IV-A3; Fig. 8 compares SGD and AdamW
    weight_decay: float | None = None          # None: 0 for Adam/SGD, 0.01 for AdamW (§IV-C5)
    mlp_ratio: int = 4                         # official adapter_plus.py MLP hidden = 4C
    losses: str = "both"                       # Tab. V: "both" | "contrastive" | "cross_entropy"
    vision_driven_text: bool = True            # Tab. VI: TF added to the visual features
    text_driven_visual: bool = True            # Tab. VI: VT added to the text features
    descriptor_text: str = "adapted"           # Eq. 6 (ψ = adapted T); the official code uses "original"
    prompts: str = "cpe"                       # Fig. 11 (see PROMPT_VARIANTS)
    snapshot_epochs: tuple[int, ...] = ()      # keep the heads after these epochs (Fig. 10 histograms)
    encode_batch_size: int = 8                  # every encoder batch has exactly this size (padded): see feature_cache
    device: str = "cpu"

    constraints: ClassVar[dict] = {
        **BACKBONE_CONSTRAINTS, "dataset_preset": [Options(tuple(BATCH_SIZES))],
        "synthesis": [Options(("random_perturbation", "nsa"))], "anomalies_per_image": [POSITIVE_INT],
        "alpha": [Each(NON_NEGATIVE, length=2)], "beta": [Each(NON_NEGATIVE, length=2)], "gamma1": [NON_NEGATIVE],
        "gamma2": [NON_NEGATIVE], "temperature": [POSITIVE], "contrastive_temperature": [POSITIVE],
        "image_learning_rate": [POSITIVE], "text_learning_rate": [POSITIVE], "epochs": [POSITIVE_INT],
        "batch_size": [POSITIVE_INT, None], "optimizer": [Options(OPTIMIZERS)], "weight_decay": [NON_NEGATIVE, None],
        "mlp_ratio": [POSITIVE_INT], "losses": [Options(LOSS_CHOICES)], "vision_driven_text": [bool],
        "text_driven_visual": [bool], "descriptor_text": [Options(("adapted", "original"))],
        "prompts": [Options(tuple(PROMPT_VARIANTS))], "snapshot_epochs": [Each(POSITIVE_INT, min_length=0)],
        "encode_batch_size": [POSITIVE_INT],
    }

    def check(self):
        for name in ("alpha", "beta"):
            if not math.isclose(sum(getattr(self, name)), 1.0, abs_tol=1e-6):
                self.fail(name, "expected two residual weights >= 0 that sum to 1 (adapted, original), e.g. "
                                "(0.4, 0.6) for MVTec AD or (0.1, 0.9) for VisA")

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "CLIPFSACConfig":
        """The §IV-A3 settings of ``dataset`` ("mvtec" | "visa"), with ``overrides`` on top."""
        if dataset not in DATASET_DEFAULTS:
            raise ValueError(f"the paper gives settings for {sorted(DATASET_DEFAULTS)}, not {dataset!r}")
        return cls(dataset_preset=dataset, **DATASET_DEFAULTS[dataset]).replace(**overrides)

    def batch_size_for(self, shots: int) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        table = BATCH_SIZES[self.dataset_preset]
        listed = [s for s in table if s <= shots]
        return table[max(listed)] if listed else 1  # other shot counts: the nearest listed one below


class MLP(nn.Sequential):
    """C -> ratio·C -> C with GELU between (one "MLP" of the adapters)."""

    def __init__(self, width: int, ratio: int):
        super().__init__(nn.Linear(width, width * ratio), nn.GELU(), nn.Linear(width * ratio, width))


class Adapter(nn.Module):
    """``depth`` MLPs, each followed by GELU, then a linear layer: [..., C] -> [..., C]."""

    def __init__(self, width: int, depth: int, ratio: int):
        super().__init__()
        self.blocks = nn.ModuleList(MLP(width, ratio) for _ in range(depth))
        self.output = nn.Linear(width, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            features = F.gelu(block(features))
        return self.output(features)


def cross_attention(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √C) K: queries [..., Q, C] attend to keys [..., K, C] (keys are the values)."""
    weights = (queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])).softmax(dim=-1)
    return weights @ keys


@dataclass
class HeadOutput:
    """visual: CF [N, C]; adapted_text: AT [2, C]; enhanced_text: CT [2, C] (a batch) or [N, 2, C] (per image)."""

    visual: torch.Tensor
    adapted_text: torch.Tensor
    enhanced_text: torch.Tensor


class CLIPFSACHead(nn.Module):
    """The trainable parts: image adapter, text adapter and the Anomaly Descriptor."""

    def __init__(self, width: int, config: CLIPFSACConfig):
        super().__init__()
        self.config = config
        self.image_adapter = Adapter(width, depth=2, ratio=config.mlp_ratio)
        self.text_adapter = Adapter(width, depth=1, ratio=config.mlp_ratio)
        self.image_to_text = nn.Linear(width, width)   # the Linear of Eq. 7
        self.text_to_image = nn.Linear(width, width)   # the Linear of Eq. 8
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)  # official init_weight

    def descriptor_parameters(self):
        return [*self.image_to_text.parameters(), *self.text_to_image.parameters()]

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, per_image: bool) -> HeadOutput:
        """image_features F [N, C]; text_features T [2, C] (normal, abnormal).

        ``per_image=False`` (training): the text-to-image attention attends over all N images of
        the batch, CT is [2, C]. ``per_image=True`` (testing): each image attends to itself
        alone, CT is [N, 2, C], and no image's score depends on another.
        """
        config = self.config
        (a1, a2), (b1, b2) = config.alpha, config.beta
        adapted_visual = a1 * self.image_adapter(image_features) + a2 * image_features          # AF, Eq. 4
        adapted_text = b1 * self.text_adapter(text_features) + b2 * text_features               # AT = ψ, Eq. 5–6
        descriptor_text = adapted_text if config.descriptor_text == "adapted" else text_features
        vision_driven = self.image_to_text(cross_attention(image_features, descriptor_text))   # TF [N, C], Eq. 7
        visual = adapted_visual + vision_driven if config.vision_driven_text else adapted_visual  # CF, Eq. 9
        keys = vision_driven[:, None, :] if per_image else vision_driven  # [N, 1, C] or [N, C]
        text_driven = self.text_to_image(cross_attention(descriptor_text, keys))               # VT, Eq. 8
        if config.text_driven_visual:
            enhanced_text = adapted_text + config.gamma1 * text_driven                         # CT, Eq. 9
        else:
            enhanced_text = adapted_text.expand_as(text_driven) if per_image else adapted_text
        return HeadOutput(visual, adapted_text, enhanced_text)


def text_logits(visual: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(visual [N, C], text [2, C] or [N, 2, C]) / τ -> [N, 2] (normal, abnormal)."""
    visual = F.normalize(visual, dim=-1)
    text = F.normalize(text, dim=-1)
    if text.ndim == 2:
        return visual @ text.T / temperature
    return torch.einsum("nc,nkc->nk", visual, text) / temperature


class _FrozenCLIPClassifier(Detector):
    """Shared by CLIP-AC and CLIP-FSAC++: frozen [CLS] embeddings (optionally cached) and T+/T−."""

    localizes = False

    def __init__(self, config, backbone=None, feature_cache: FeatureCache | None = None,
                 transform: ImageTransform | None = None):
        self.config = config
        self.backbone = backbone or build_clip(config.backbone, config.pretrained, config.image_size, config.device)
        self.feature_cache = feature_cache
        self._transform = transform or ImageTransform.for_backbone(self.backbone)
        self._text: dict[str, torch.Tensor] = {}
        self._backbone_identity: dict | None = None

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images.to(self.config.device), normalize=False).float()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] transformed images -> F [N, C] (the unnormalized [CLS] embedding, Eq. 2)."""
        if self.feature_cache is None:
            # The same fixed-size batches as the cache encodes, so both paths give the same bits.
            with torch.no_grad():
                return encode_in_fixed_batches(self._encode, images, self.config.encode_batch_size)
        return self.feature_cache.embed(self._cache_namespace("image"), images, self._encode,
                                        batch_size=self.config.encode_batch_size).to(self.config.device)

    def _cache_namespace(self, kind: str) -> str:
        """The cache namespace of this backbone's ``kind`` ("image" | "text") embeddings."""
        if self._backbone_identity is None:
            # the weights are hashed once per backbone, however many detectors share it
            self._backbone_identity = {"spec": vars(self.backbone.spec), "weights": self.backbone.weights_fingerprint()}
        described = self.transform.describe() if kind == "image" else {"text": "raw mean of each prompt ensemble"}
        return FeatureCache.namespace(self._backbone_identity, described)

    def text_features(self, class_name: str) -> torch.Tensor:
        """T [2, C]: the mean of the raw text embeddings of the normal and of the abnormal sentences (Eq. 3)."""
        if class_name not in self._text:
            ensemble = PROMPT_VARIANTS[self.config.prompts]
            sentences = ensemble.sentences(prompt_class_name(class_name))
            count = ensemble.normal_count

            def encode(_indices) -> np.ndarray:
                with torch.no_grad():
                    embeddings = self.backbone.encode_text(sentences, normalize=False).float()
                return torch.stack([embeddings[:count].mean(0), embeddings[count:].mean(0)])[None].cpu().numpy()

            if self.feature_cache is None:
                self._text[class_name] = torch.from_numpy(encode(None)[0])
            else:  # each detector of a sweep would otherwise encode its prompts again
                key = hashlib.blake2b(json.dumps([count, sentences]).encode(), digest_size=16).hexdigest()
                self._text[class_name] = torch.from_numpy(
                    self.feature_cache.rows(self._cache_namespace("text"), [key], encode)[0])
        return self._text[class_name]

    @staticmethod
    def _check_class_names(images: torch.Tensor, class_names) -> list[str]:
        if class_names is None or len(class_names) != len(images):
            raise ValueError("CLIP-FSAC++ needs one class name per image (its text prompts name the object)")
        return list(class_names)


@dataclass(frozen=True)
class CLIPACConfig(ValidatedConfig):
    """Zero-shot CLIP-AC (WinCLIP §3.1, CLIP-FSAC++ Fig. 2a): the starting point of CLIP-FSAC++."""

    backbone: str = "ViT-B-16-plus-240"        # as CLIP-FSAC++ (§IV-A3)
    pretrained: str | None = "laion400m_e31"
    image_size: int = 240
    prompts: str = "cpe"                       # WinCLIP's compositional prompt ensemble
    temperature: float = 0.07                  # CLIP's temperature (WinCLIP §3.1)
    encode_batch_size: int = 8                  # every encoder batch has exactly this size (padded): see feature_cache
    device: str = "cpu"

    constraints: ClassVar[dict] = {**BACKBONE_CONSTRAINTS, "prompts": [Options(tuple(PROMPT_VARIANTS))],
                                   "temperature": [POSITIVE], "encode_batch_size": [POSITIVE_INT]}


@register_method("clip_ac", display_name="CLIP-AC", config=CLIPACConfig, fits_on=("nothing",),
                 paper="zero-shot CLIP anomaly classification as in Jeong et al., WinCLIP, CVPR 2023, arXiv:2303.14814 "
                       "(§3.1), the starting point of CLIP-FSAC++ (Fig. 2a)",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64})
class CLIPACDetector(_FrozenCLIPClassifier):
    """softmax(cos(F, T)/τ)[abnormal] with the frozen encoders: no adapters, nothing learned."""

    name = "clip_ac"

    def fit(self, data: FitData) -> "CLIPACDetector":
        return self  # zero-shot: nothing to learn

    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        names = self._check_class_names(images, class_names)
        features = self.image_features(images)
        text = torch.stack([self.text_features(name) for name in names])
        scores = text_logits(features, text, self.config.temperature).softmax(dim=-1)[:, 1]
        return Prediction(image_scores=scores.detach().float().cpu(), anomaly_maps=None)


@register_method("clip_fsac", display_name="CLIP-FSAC++", config=CLIPFSACConfig, fits_on=("references",),
                 paper="Zuo et al., CLIP-FSAC++: Few-Shot Anomaly Classification with Anomaly Descriptor Based on "
                       "CLIP, 2024 manuscript",
                 smoke_changes={"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64, "epochs": 2,
                                "anomalies_per_image": 2})
class CLIPFSACDetector(_FrozenCLIPClassifier):
    """Few-shot: ``fit(FitData(reference_images, class_name, seed))`` trains the heads on one category."""

    name = "clip_fsac"

    def __init__(self, config: CLIPFSACConfig = CLIPFSACConfig(), backbone=None,
                 feature_cache: FeatureCache | None = None, transform: ImageTransform | None = None):
        super().__init__(config, backbone, feature_cache, transform)
        self.head: CLIPFSACHead | None = None
        self.class_name: str | None = None
        self.loss_history: list[float] = []
        self.snapshots: dict[int, dict] = {}

    def _synthetic_anomalies(self, references: np.ndarray, seed: int) -> np.ndarray:
        """[K, S, S, 3] uint8 -> [K, J, S, S, 3] uint8: J anomalies of each reference, seeded by (seed, image).

        With a feature cache, each anomaly is kept there with its mask ([S, S, 4]: RGB and the
        mask as a 0/1 channel), keyed by the reference's bytes, the seed, the shot index, its
        own index and the synthesis code, so a warm sweep draws nothing again.
        """
        from ..synthesis import synthesis_fingerprint, synthesize_shot_anomalies  # only fitting needs them

        config = self.config
        shots, per_image = len(references), config.anomalies_per_image

        def draw() -> np.ndarray:
            """[K * J, S, S, 4]: every anomaly of every shot, RGB and mask."""
            drawn = synthesize_shot_anomalies(references, config.synthesis, per_image, seed)
            return np.stack([np.concatenate([a.image, a.mask[..., None].astype(np.uint8)], axis=-1)
                             for shot in drawn for a in shot])

        if self.feature_cache is None:
            return draw()[..., :3].reshape(shots, per_image, *references.shape[1:])
        namespace = FeatureCache.namespace({"synthesis": config.synthesis, "code": synthesis_fingerprint()},
                                           {"rows": "anomaly RGB + mask"})
        keys = [hashlib.blake2b(f"{reference_key},{seed},{shot},{j}".encode(), digest_size=16).hexdigest()
                for shot, reference_key in enumerate(tensor_digest(torch.from_numpy(r)) for r in references)
                for j in range(per_image)]

        # A fit's anomalies are missing all together or not at all (unless anomalies_per_image grew).
        rows = self.feature_cache.rows(namespace, keys, lambda indices: draw()[indices])
        return rows[..., :3].reshape(shots, per_image, *rows.shape[1:3], 3)

    def _optimizer(self, head: CLIPFSACHead) -> torch.optim.Optimizer:
        config = self.config
        groups = [
            {"params": [*head.image_adapter.parameters(), *head.descriptor_parameters()],
             "lr": config.image_learning_rate},
            {"params": list(head.text_adapter.parameters()), "lr": config.text_learning_rate},
        ]
        decay = config.weight_decay if config.weight_decay is not None else (0.01 if config.optimizer == "adamw" else 0.0)
        if config.optimizer == "adam":
            # Fused: one pass over parameters, gradients and moments per step. At the paper's width
            # (640) the heads hold ~7.5M parameters and the per-tensor update was memory-bound: 23 ms
            # per step on 2 CPU cores against 4 ms fused (scripts/bench_feature_cache.py's warm path).
            return torch.optim.Adam(groups, weight_decay=decay, fused=True)
        if config.optimizer == "adamw":
            return torch.optim.AdamW(groups, weight_decay=decay, fused=True)
        return torch.optim.SGD(groups, weight_decay=decay, foreach=True)

    def training_loss(self, head: CLIPFSACHead, normal: torch.Tensor, anomalous: torch.Tensor,
                      text: torch.Tensor) -> torch.Tensor:
        """Eq. 13 on one batch: normal F+ [B, C], anomalous F− [B, C], text T [2, C]."""
        config = self.config
        batch = normal.shape[0]
        output = head(torch.cat([normal, anomalous]), text, per_image=False)
        loss = normal.new_zeros(())
        if config.losses in ("both", "contrastive"):
            image_to_text, text_to_image = cross_modal_contrastive(
                output.visual[:batch], output.visual[batch:], output.adapted_text, config.contrastive_temperature)
            loss = loss + image_to_text + text_to_image
        if config.losses in ("both", "cross_entropy"):
            labels = torch.cat([torch.zeros(batch), torch.ones(batch)]).long().to(normal.device)
            logits = text_logits(output.visual, output.enhanced_text, config.temperature)
            weight = config.gamma2 if config.losses == "both" else 1.0
            loss = loss + weight * F.cross_entropy(logits, labels)
        return loss

    def fit(self, data: FitData) -> "CLIPFSACDetector":
        """Train the heads on the k references of one category and their synthetic anomalies."""
        config = self.config
        if data.reference_images is None or len(data.reference_images) == 0:
            raise ValueError("CLIP-FSAC++ trains on k normal shots: fit(FitData(reference_images=[K, 3, S, S], "
                             "class_name=...)) with K >= 1")
        if not data.class_name:
            raise ValueError("CLIP-FSAC++ needs the references' class name (FitData.class_name) for its text prompts")
        references = self.transform.to_uint8(data.reference_images)
        anomalies = self._synthetic_anomalies(references, data.seed)  # [K, J, S, S, 3]
        shots, per_image = anomalies.shape[:2]
        text = self.text_features(data.class_name).to(config.device)

        if self.feature_cache is not None:  # every image embedded once, through the cache
            normal_features = self.image_features(data.reference_images)
            flat = anomalies.reshape(-1, *anomalies.shape[2:])
            anomaly_features = torch.cat([
                self.image_features(torch.stack([self.transform.image(a) for a in flat[i:i + 64]]))
                for i in range(0, len(flat), 64)]).reshape(shots, per_image, -1)

            def batch_features(indices, epoch):
                return normal_features[indices], anomaly_features[indices, epoch % per_image]
        else:  # the official way: encode the batch's images at every step

            def batch_features(indices, epoch):
                normal = self.image_features(data.reference_images[indices])
                anomalous = torch.stack([self.transform.image(anomalies[i, epoch % per_image]) for i in indices.tolist()])
                return normal, self.image_features(anomalous)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data.seed)
            head = CLIPFSACHead(text.shape[-1], config).to(config.device)
        optimizer = self._optimizer(head)
        generator = torch.Generator().manual_seed(data.seed)
        batch_size = config.batch_size_for(shots)
        self.loss_history, self.snapshots = [], {}
        progress = tqdm(range(config.epochs), desc=f"CLIP-FSAC++ {data.class_name} {shots}-shot", leave=False)
        for epoch in progress:
            order = torch.randperm(shots, generator=generator)
            losses = []
            for start in range(0, shots, batch_size):
                normal, anomalous = batch_features(order[start:start + batch_size], epoch)
                losses.append(gradient_step(optimizer, self.training_loss(head, normal, anomalous, text)))
            self.loss_history.append(float(np.mean(losses)))
            progress.set_postfix(loss=f"{self.loss_history[-1]:.4f}")
            if epoch + 1 in config.snapshot_epochs:
                self.snapshots[epoch + 1] = copy.deepcopy(head.state_dict())
        self.head, self.class_name = head.eval(), data.class_name
        return self

    def _require_fit(self) -> CLIPFSACHead:
        if self.head is None:
            raise RuntimeError("CLIP-FSAC++ is few-shot: call fit(FitData(reference_images=..., class_name=...)) "
                               "before predict")
        return self.head

    def _scores(self, features: torch.Tensor, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """F [N, C] and one class name per row -> (AS [N] (Eq. 14–16), CF [N, C]); each image alone."""
        head = self._require_fit()
        visual = torch.empty_like(features)
        text = features.new_empty(features.shape[0], 2, features.shape[1])
        for name in dict.fromkeys(class_names):
            rows = [i for i, n in enumerate(class_names) if n == name]
            output = head(features[rows], self.text_features(name).to(features.device), per_image=True)
            visual[rows], text[rows] = output.visual, output.enhanced_text
        scores = text_logits(visual, text, self.config.temperature).softmax(dim=-1)[:, 1]  # AS = S−
        return scores, visual

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Sequence[str] | None = None) -> Prediction:
        """images [B, 3, S, S] -> anomaly scores AS [B] (Eq. 16); classification only, no maps."""
        names = self._check_class_names(images, class_names)
        scores, _ = self._scores(self.image_features(images), names)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=None)

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor, class_names: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"clip": F [B, C], "adapted": CF [B, C]} — the features Fig. 9 projects with t-SNE."""
        names = self._check_class_names(images, class_names)
        features = self.image_features(images)
        _, adapted = self._scores(features, names)
        return {"clip": features.cpu(), "adapted": adapted.cpu()}

    def gradient_maps(self, images: torch.Tensor, class_names: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        """|∂AS/∂x| averaged over the colour channels (Eq. 17): [B, 3, S, S] -> [B, S, S].

        Computed ``batch_size`` images at a time: the backward pass keeps every activation of the
        encoder, ~0.25 GB per image for ViT-B/16+ at 240 px. Each image's score depends on that
        image alone, so the chunking does not change the maps."""
        names = self._check_class_names(images, class_names)
        maps = []
        for first in range(0, len(images), batch_size):
            inputs = images[first:first + batch_size].detach().to(self.config.device).requires_grad_(True)
            with torch.enable_grad():
                scores, _ = self._scores(self._encode(inputs), names[first:first + batch_size])
                (gradient,) = torch.autograd.grad(scores.sum(), inputs)
            maps.append(gradient.abs().mean(dim=1).cpu())
        return torch.cat(maps)

    @contextlib.contextmanager
    def at_epoch(self, epoch: int):
        """Predict with the heads as they were after ``epoch`` (one of ``config.snapshot_epochs``)."""
        head = self._require_fit()
        if epoch not in self.snapshots:
            raise KeyError(f"no snapshot after epoch {epoch}; kept: {sorted(self.snapshots)} "
                           "(set CLIPFSACConfig.snapshot_epochs before fit)")
        final = copy.deepcopy(head.state_dict())
        head.load_state_dict(self.snapshots[epoch])
        try:
            yield self
        finally:
            head.load_state_dict(final)


def notebook_config(dataset: str, *, backbone: str, pretrained: str | None, image_size: int, epochs: int,
                    anomalies_per_image: int, learning_rates: Sequence[float], device: str = "cpu",
                    **changes) -> CLIPFSACConfig:
    """The config the CLIP-FSAC++ notebooks run: §IV-A3's settings of ``dataset`` (VisA's on data
    the paper did not use, such as the synthetic smoke set), the profile's backbone and schedule,
    and an ablation's ``changes`` on top."""
    preset = dataset if dataset in DATASET_DEFAULTS else "visa"
    image_learning_rate, text_learning_rate = learning_rates
    return CLIPFSACConfig.for_dataset(preset, **{
        "backbone": backbone, "pretrained": pretrained, "image_size": image_size, "device": device, "epochs": epochs,
        "anomalies_per_image": anomalies_per_image, "image_learning_rate": image_learning_rate,
        "text_learning_rate": text_learning_rate, **changes})
