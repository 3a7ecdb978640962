"""Contrastive pretraining of a tiny open_clip model on the captioned synthetic corpus.

open_clip's own model (``create_model``), tokenizer, patch dropout (FLIP) and loss (``ClipLoss``);
the loop around them is the usual one (AdamW without weight decay on gains, biases and
embeddings, linear warm-up then cosine decay, the logit scale clamped at 100), written here
because open_clip's training loop ships in a separate package (``open_clip_train``) built for
web-scale datasets and distributed runs.

Deterministic on CPU: the model's initialisation, the pools and every batch are functions of the
seed alone (batch ``t`` is drawn from its own rng, so a run gives the same batches whatever the
evaluation schedule), and torch runs its deterministic kernels.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.transformer import PatchDropout
from sklearn.metrics import roc_auc_score

from ..backbones import clip as clip_backbones  # registers the clipad-tiny-* configs
from ..data.transforms import ImageTransform
from ..io import UMASK, atomic_write
from . import corpus

SHIPPED_DTYPE = torch.float16  # half the size of float32; the model is rounded to it before its last evaluation
_NO_DECAY = ("positional_embedding", "class_embedding", "token_embedding", "logit_scale")


@dataclass(frozen=True)
class PretrainConfig:
    """What the shipped ``clipad-tiny-ViT`` / ``clipad-synthetic`` weights were trained with."""

    model_name: str = "clipad-tiny-ViT"
    image_size: int = 128              # the smoke profile's AdaCLIP/APRIL-GAN/WinCLIP resolution
    seed: int = 0
    pairs_per_category: int = 160      # 24 x 160 normal/defective pairs = 7,680 training images
    heldout_pairs_per_category: int = 6
    steps: int = 2000
    pairs_per_batch: int = 32          # 64 images a step: 32 normal crops and their defective twins
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1          # open_clip's default for its ViT recipes
    patch_dropout: float = 0.5         # FLIP: half the patch tokens per training image (2x faster, and
                                       # the model learns to read a subset of the patches)
    min_crop_scale: float = 0.35       # crops cover 35-100 % of the side
    eval_every: int = 100

    def __post_init__(self):
        if self.steps < 1 or self.pairs_per_batch < 2 or self.eval_every < 1:
            raise ValueError("steps and eval_every must be >= 1 and pairs_per_batch >= 2")
        if not 0 <= self.patch_dropout < 1:
            raise ValueError(f"patch_dropout must be in [0, 1), got {self.patch_dropout}")


@dataclass
class TrainingLog:
    config: dict
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    torch_threads: int = 0
    torch_version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainingLog":
        return cls(**json.loads(text))


def build_model(config: PretrainConfig) -> torch.nn.Module:
    """The open_clip model at ``image_size``, initialised from ``seed`` (the caller's RNG untouched)."""
    with clip_backbones._quiet_random_init(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return open_clip.create_model(config.model_name, pretrained=None, force_image_size=config.image_size)


def _normalizer(model) -> ImageTransform:
    """The model's own mean/std (open_clip's preprocess config; CLIP's by default)."""
    preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
    return ImageTransform(int(model.visual.image_size[0]),
                          mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                          std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)))


class _Tokens:
    """The tokenizer with a cache: the corpus repeats its captions."""

    def __init__(self, model_name: str):
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            for text, tokens in zip(missing, self.tokenizer(missing)):
                self.cache[text] = tokens
        return torch.stack([self.cache[c] for c in captions])


def _optimizer(model, config: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        plain = parameter.ndim < 2 or any(key in name for key in _NO_DECAY)
        (no_decay if plain else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)


def learning_rate_factor(step: int, config: PretrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, heldout: corpus.PairPool, config: PretrainConfig, tokens: _Tokens | None = None,
             batch_size: int = 128) -> dict:
    """Zero-shot figures on held-out pairs (seeds no training pair uses).

    * ``retrieval_i2t`` / ``retrieval_t2i``: top-1 retrieval among the crops of one held-out batch
      and their captions (a hit when the retrieved caption is the true one, word for word);
    * ``category_accuracy``: "a photo of a {category}." among the 24 categories, full images;
    * ``state_auroc``: normal vs defective full images scored by softmax(100 cos) between
      "a photo of a damaged {c}." and "a photo of a flawless {c}.", AUROC per category, averaged.
    """
    was_training = model.training
    model.eval()
    tokens = tokens or _Tokens(config.model_name)
    normalize = _normalizer(model).normalize
    device = next(model.parameters()).device

    def text(captions: list[str]) -> torch.Tensor:
        return F.normalize(model.encode_text(tokens(captions).to(device)), dim=-1).cpu()

    rng = np.random.default_rng([corpus.CORPUS_SEED_TAG, config.seed, 3])
    crops, captions = corpus.sample_batch(heldout, min(len(heldout), 96), rng, config.min_crop_scale)
    image_features = _encode_images(model, normalize(crops), batch_size)
    text_features = text(captions)
    similarity = image_features @ text_features.T
    caption_array = np.array(captions)
    i2t = float(np.mean(caption_array[similarity.argmax(1).numpy()] == caption_array))
    t2i = float(np.mean(caption_array[similarity.argmax(0).numpy()] == caption_array))

    images, category, defective = corpus.full_views(heldout)
    features = _encode_images(model, normalize(images), batch_size)
    names = corpus.CATEGORIES
    category_text = text([f"a photo of a {c}." for c in names])
    category_accuracy = float(np.mean((features @ category_text.T).argmax(1).numpy() == category))
    normal_text = text([f"a photo of a flawless {c}." for c in names])
    damaged_text = text([f"a photo of a damaged {c}." for c in names])
    own = torch.from_numpy(category)
    logits = 100 * torch.stack([(features * normal_text[own]).sum(-1), (features * damaged_text[own]).sum(-1)], -1)
    score = logits.softmax(-1)[:, 1].numpy()
    per_category = {names[c]: float(roc_auc_score(defective[category == c], score[category == c]))
                    for c in np.unique(category)}
    model.train(was_training)
    return {"retrieval_i2t": i2t, "retrieval_t2i": t2i, "category_accuracy": category_accuracy,
            "state_auroc": float(np.mean(list(per_category.values()))), "state_auroc_per_category": per_category}


def _encode_images(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([F.normalize(model.encode_image(chunk.to(device)), dim=-1).cpu()
                      for chunk in images.split(batch_size)])


def pretrain(config: PretrainConfig = PretrainConfig(), progress: Callable | None = None
             ) -> tuple[torch.nn.Module, TrainingLog]:
    """Train and return (model, log). ``progress`` wraps the step range (e.g. ``tqdm.auto.tqdm``).

    Runs under torch's deterministic kernels; the caller's setting is restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(config, progress)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _pretrain(config: PretrainConfig, progress: Callable | None) -> tuple[torch.nn.Module, TrainingLog]:
    started = time.perf_counter()
    model = build_model(config)
    if config.patch_dropout:
        model.visual.patch_dropout = PatchDropout(config.patch_dropout)
    train_pool = corpus.make_pool(config.pairs_per_category, config.seed, config.image_size, split=0)
    heldout = corpus.make_pool(config.heldout_pairs_per_category, config.seed, config.image_size, split=1)
    tokens, normalize = _Tokens(config.model_name), _normalizer(model).normalize
    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    loss_fn = ClipLoss()
    log = TrainingLog(config=asdict(config), torch_threads=torch.get_num_threads(), torch_version=torch.__version__)
    steps = range(config.steps)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # patch dropout draws from torch's RNG
        for step in (progress(steps) if progress else steps):
            if step % config.eval_every == 0:
                log.evaluations.append({"step": step, **evaluate(model, heldout, config, tokens)})
            rng = np.random.default_rng([corpus.CORPUS_SEED_TAG, config.seed, 2, step])
            images, captions = corpus.sample_batch(train_pool, config.pairs_per_batch, rng, config.min_crop_scale)
            image_features, text_features, logit_scale = model(normalize(images), tokens(captions))
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            log.steps.append(step)
            log.loss.append(float(loss.detach()))
    # The weights ship in float16: round them now, so the last evaluation is of the shipped model.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(SHIPPED_DTYPE))
    log.evaluations.append({"step": config.steps, **evaluate(model, heldout, config, tokens)})
    log.seconds = time.perf_counter() - started
    model.eval()
    return model, log


def save_weights(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = SHIPPED_DTYPE) -> int:
    """Write the state dict as safetensors in ``dtype`` (atomically); return the file's size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to(dtype).contiguous() for key, value in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={"format": "pt"})
    partial.chmod(0o666 & ~UMASK)  # safetensors writes 0600; the package file is for every user
    partial.replace(path)
    return path.stat().st_size


def save_log(log: TrainingLog, path: str | Path) -> None:
    atomic_write(path, log.to_json())


def evaluate_backbone(backbone, config: PretrainConfig = PretrainConfig()) -> dict:
    """:func:`evaluate` of a built :class:`~clipad_lib.backbones.ClipBackbone` (e.g. the shipped
    weights through ``build_clip``) on the held-out pairs of ``config``'s seed."""
    if backbone.image_size != config.image_size:
        raise ValueError(f"the held-out pairs are {config.image_size} px; build the backbone with "
                         f"image_size={config.image_size} (got {backbone.image_size})")
    heldout = corpus.make_pool(config.heldout_pairs_per_category, config.seed, config.image_size, split=1)
    return evaluate(backbone.model, heldout, config)
