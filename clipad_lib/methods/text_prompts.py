"""Text prompt ensembles: state words x templates, averaged into one normal and one abnormal embedding.

The state words are WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023), shared by
APRIL-GAN and AdaCLIP; the template lists differ per method and are given with their source.
Every sentence embedding is normalized, the sentences of a state are averaged, and the average
is normalized again (as all three code bases do).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")

# AdaCLIP's text embedding layer (official code, method/adaclip.py): four templates.
ADACLIP_TEMPLATES = ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
                     "a cropped photo of the {}.")

# APRIL-GAN's prompt_ensemble.py: the 35 templates.
APRILGAN_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a photo of one {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.", "there is a {} in the scene.",
    "there is the {} in the scene.", "this is a {} in the scene.", "this is the {} in the scene.",
    "this is one {} in the scene.",
)


# WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023, Fig. 6 / supp.): 22 templates,
# 7 normal and 4 abnormal states (154 and 88 sentences per class).
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
    "a dark photo of a {}.", "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.", "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)
WINCLIP_ABNORMAL_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

# anomalib's WinCLIP (src/anomalib/models/image/winclip/prompting.py): 21 templates — the paper's
# 22 without "a cropped photo of a {}." and "a jpeg corrupted photo of a {}.", with "a jpeg
# corrupted photo of the {}." twice, as anomalib lists it — and the sentence embeddings
# averaged raw (not normalized first). Kept so an anomalib row can be reproduced exactly.
ANOMALIB_WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)


@dataclass(frozen=True)
class PromptEnsemble:
    templates: tuple[str, ...]
    normal_states: tuple[str, ...] = NORMAL_STATES
    abnormal_states: tuple[str, ...] = ABNORMAL_STATES
    normalize_sentences: bool = True  # normalize each sentence embedding before the state's mean
    hyphen_as_space: bool = True      # "metal-nut" -> "metal nut" in sentences (AdaCLIP); APRIL-GAN keeps it

    @property
    def normal_count(self) -> int:
        return len(self.normal_states) * len(self.templates)

    def sentences(self, class_name: str) -> list[str]:
        """All sentences for one class: the normal ones first, then the abnormal ones."""
        return [template.format(state.format(class_name))
                for states in (self.normal_states, self.abnormal_states)
                for state in states
                for template in self.templates]


ADACLIP_ENSEMBLE = PromptEnsemble(ADACLIP_TEMPLATES)
APRILGAN_ENSEMBLE = PromptEnsemble(APRILGAN_TEMPLATES, hyphen_as_space=False)  # its code uses the name as given
WINCLIP_ENSEMBLE = PromptEnsemble(WINCLIP_TEMPLATES, abnormal_states=WINCLIP_ABNORMAL_STATES)
ANOMALIB_WINCLIP_ENSEMBLE = PromptEnsemble(ANOMALIB_WINCLIP_TEMPLATES, abnormal_states=WINCLIP_ABNORMAL_STATES,
                                           normalize_sentences=False)


def prompt_class_name(folder_name: str) -> str:
    """The class name put into sentences: the folder name with '-' read as a space (AdaCLIP)."""
    return folder_name.replace("-", " ")


def state_embeddings(sentence_embeddings: torch.Tensor, normal_count: int,
                     normalize_sentences: bool = True) -> torch.Tensor:
    """[..., P, D] sentence embeddings (normal first) -> [..., 2, D] normalized (normal, abnormal).

    Each state's sentences are averaged — after normalizing each (the paper codes) or raw
    (anomalib) — and the mean is normalized."""
    embeddings = F.normalize(sentence_embeddings, dim=-1) if normalize_sentences else sentence_embeddings
    normal = F.normalize(embeddings[..., :normal_count, :].mean(dim=-2), dim=-1)
    abnormal = F.normalize(embeddings[..., normal_count:, :].mean(dim=-2), dim=-1)
    return torch.stack([normal, abnormal], dim=-2)


@torch.no_grad()
def frozen_text_embeddings(backbone, ensemble: PromptEnsemble, class_name: str) -> torch.Tensor:
    """[2, D] (normal, abnormal) embeddings of one class from a frozen CLIP text tower."""
    name = prompt_class_name(class_name) if ensemble.hyphen_as_space else class_name
    sentences = backbone.encode_text(ensemble.sentences(name), normalize=False)
    return state_embeddings(sentences, ensemble.normal_count, ensemble.normalize_sentences)


def full_precision(device):
    """A context that turns autocast off on ``device``'s type while it is on (else does nothing).

    What is cached once per class and reused (text embeddings) is computed in it, so an
    evaluation under autocast (``evaluate_detector(precision="bf16")``) neither stores
    reduced-precision entries that a later fp32 evaluation would read, nor depends on which
    precision ran first."""
    device_type = torch.device(device).type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def cached_text_embeddings(cache: dict, backbone, ensemble: PromptEnsemble, class_names) -> torch.Tensor:
    """[B, 2, D] frozen text embeddings, one pair per image, computed once per class into ``cache``
    (always in full precision: see :func:`full_precision`)."""
    missing = [name for name in dict.fromkeys(class_names) if name not in cache]
    if missing:
        with full_precision(next(backbone.parameters()).device):
            for name in missing:
                cache[name] = frozen_text_embeddings(backbone, ensemble, name)
    return torch.stack([cache[name] for name in class_names])
