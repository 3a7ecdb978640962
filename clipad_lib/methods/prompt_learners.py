"""CoOp, CoCoOp, MaPLe and PDT as few-shot anomaly detectors (Sea-CLIP supp. Tab. 7).

Each is a config with its paper's defaults and a detector that names its prompting module;
the training loop and the scoring are :mod:`.prompt_learning`'s (whose docstring gives every
choice made where Sea-CLIP is silent). Defaults are the published few-shot recipes of the
official code bases (KaiyangZhou/CoOp for CoOp and CoCoOp, muzairkhattak/multimodal-prompt-learning
for MaPLe) on the backbone Sea-CLIP uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..backbones import architecture
from .base import POSITIVE_INT
from .prompt_learning import (ContextPrompts, FixedTemplates, MultiModalPrompts, PromptLearnerConfig,
                              PromptLearningDetector, PromptScoringConfig)
from .registry import register_method

# Seconds-long runs on the tiny random-init CLIP (contract test, quick checks); never the papers'.
TINY = {"backbone": "clipad-tiny-ViT", "pretrained": None, "image_size": 64}
TINY_TRAINING = {**TINY, "epochs": 2, "anomalies_per_image": 2, "warmup_epochs": 0}


@dataclass(frozen=True)
class CoOpConfig(PromptLearnerConfig):
    context_length: int = 16          # COOP.md scripts: M = 16, class token at the end, unified context
    epochs: int | None = None         # COOP.md scripts: 50 (1 shot), 100 (2, 4 shots), 200 (8, 16 shots)
    learning_rate: float = 0.002      # configs/trainers/CoOp/vit_b16*.yaml: SGD, LR 0.002, cosine
    train_batch_size: int = 32        # configs/trainers/CoOp/vit_b16*.yaml: BATCH_SIZE 32

    epoch_table: ClassVar[dict[int, int]] = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


@dataclass(frozen=True)
class CoCoOpConfig(PromptLearnerConfig):
    context_length: int = 4           # configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml: N_CTX 4
    context_init: str | None = "a photo of a"  # same file: CTX_INIT "a photo of a"
    epochs: int | None = 10           # same file: MAX_EPOCH 10
    learning_rate: float = 0.002      # same file: SGD, LR 0.002, cosine
    train_batch_size: int = 1         # same file: BATCH_SIZE 1


@dataclass(frozen=True)
class MaPLeConfig(PromptLearnerConfig):
    context_length: int = 2           # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: N_CTX 2
    context_init: str | None = "a photo of a"  # same file: CTX_INIT "a photo of a" (its first N_CTX tokens)
    prompt_depth: int = 9             # same file: PROMPT_DEPTH 9 (J, text and vision)
    epochs: int | None = 5            # same file: MAX_EPOCH 5
    learning_rate: float = 0.0035     # same file: SGD, LR 0.0035, cosine
    train_batch_size: int = 4         # same file: BATCH_SIZE 4

    constraints: ClassVar[dict] = {**PromptLearnerConfig.constraints, "prompt_depth": [POSITIVE_INT]}

    def check(self):
        super().check()
        depth = architecture(self.backbone).layers
        if self.prompt_depth > depth:
            self.fail("prompt_depth", f"{self.backbone} has {depth} image layers; the vision prompts are coupled "
                                      "to the text prompts of the same layers")


@dataclass(frozen=True)
class PDTConfig(PromptScoringConfig):
    """PDT: WinCLIP's template ensemble, scored as the learners are; nothing is trained."""


@register_method("coop", display_name="CoOp", config=CoOpConfig, fits_on=("references",),
                 paper="Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022, arXiv:2109.01134",
                 smoke_changes={**TINY_TRAINING, "train_batch_size": 4})
class CoOpDetector(PromptLearningDetector):
    """Learnable context vectors in front of the class prompts, shared by both classes."""

    name = "coop"
    display_name = "CoOp"

    def build_learner(self) -> ContextPrompts:
        return ContextPrompts(self.backbone, self.map_layer, self.config.context_length,
                              init_words=self.config.context_init)


@register_method("cocoop", display_name="CoCoOp", config=CoCoOpConfig, fits_on=("references",),
                 paper="Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022, "
                       "arXiv:2203.05557",
                 smoke_changes=TINY_TRAINING)
class CoCoOpDetector(PromptLearningDetector):
    """CoOp's context plus a per-image bias from a meta-net on the image embedding."""

    name = "cocoop"
    display_name = "CoCoOp"

    def build_learner(self) -> ContextPrompts:
        return ContextPrompts(self.backbone, self.map_layer, self.config.context_length, conditional=True,
                              init_words=self.config.context_init)


@register_method("maple", display_name="MaPLe", config=MaPLeConfig, fits_on=("references",),
                 paper="Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023, arXiv:2210.03117",
                 smoke_changes={**TINY_TRAINING, "prompt_depth": 3})
class MaPLeDetector(PromptLearningDetector):
    """Deep text prompts for the first J layers, coupled to vision prompts by linear maps."""

    name = "maple"
    display_name = "MaPLe"

    def build_learner(self) -> MultiModalPrompts:
        return MultiModalPrompts(self.backbone, self.map_layer, self.config.context_length, self.config.prompt_depth,
                                 init_words=self.config.context_init)


@register_method("pdt", display_name="PDT", config=PDTConfig, fits_on=("references",),
                 paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, CVPR 2023, "
                       "arXiv:2303.14814 (its template ensemble: the pre-defined textual template of Sea-CLIP "
                       "supp. Tab. 7)",
                 smoke_changes=TINY)
class PDTDetector(PromptLearningDetector):
    """The learners' scoring with the fixed WinCLIP ensemble: ``fit`` only records the class
    (and, with ``reference_memory``, the shots' patches)."""

    name = "pdt"
    display_name = "PDT"

    def build_learner(self) -> FixedTemplates:
        return FixedTemplates(self.backbone, self.map_layer)
