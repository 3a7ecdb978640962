"""Losses shared by the trained methods (APRIL-GAN, AdaCLIP, ...)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities (Lin et al., ICCV 2017), as the CLIP-AD code bases use it.

    Args:
        probabilities: [B, C, ...] softmax outputs (not logits).
        target: [B, ...] class indices (for maps: the binary mask).
        gamma: focusing parameter (2 in APRIL-GAN and AdaCLIP).
        smooth: label smoothing of the one-hot target and floor of p_t, as in their code.
    Returns:
        The mean over all elements of -(1 - p_t)^gamma * log(p_t).
    """
    classes = probabilities.shape[1]
    flat = probabilities.movedim(1, -1).reshape(-1, classes)
    index = target.reshape(-1).long()
    if flat.shape[0] != index.shape[0]:
        raise ValueError(f"focal_loss: {flat.shape[0]} predictions but {index.shape[0]} targets")
    one_hot = F.one_hot(index, classes).to(flat.dtype).clamp(smooth / (classes - 1), 1.0 - smooth)
    p_t = (one_hot * flat).sum(dim=1) + smooth
    return (-(1.0 - p_t) ** gamma * p_t.log()).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over images of (2|P∩G| + s) / (|P| + |G| + s). probability, target: [B, ...]."""
    prediction = probability.reshape(probability.shape[0], -1)
    truth = target.reshape(target.shape[0], -1).to(prediction.dtype)
    dice = (2 * (prediction * truth).sum(dim=1) + smooth) / (prediction.sum(dim=1) + truth.sum(dim=1) + smooth)
    return 1.0 - dice.mean()


def cross_modal_contrastive(normal_features: torch.Tensor, anomalous_features: torch.Tensor,
                            text_features: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-FSAC++'s image-to-text and text-to-image contrastive losses (Eq. 10–11).

    With s the cosine similarity, for each pair i of a normal image and its synthetic anomaly,
    i2t asks each image to prefer its own text (normal → T+, anomaly → T−) over the other text;
    t2i asks each text to prefer its own image over the other image of the pair.

    Args:
        normal_features: [B, C] features of the normal images (CF+).
        anomalous_features: [B, C] features of their synthetic anomalies (CF−).
        text_features: [2, C] (normal, abnormal) text features (AT+, AT−).
        temperature: similarities are divided by it (the paper: 1, plain cosine).
    Returns:
        (L_i2t, L_t2i), each the mean over the B pairs of the sum of its two terms.
    """
    if normal_features.shape != anomalous_features.shape or normal_features.ndim != 2:
        raise ValueError(f"expected two [B, C] feature batches of one shape, got {tuple(normal_features.shape)} "
                         f"and {tuple(anomalous_features.shape)}")
    if text_features.shape != (2, normal_features.shape[1]):
        raise ValueError(f"expected text features [2, {normal_features.shape[1]}], got {tuple(text_features.shape)}")
    text = F.normalize(text_features, dim=-1)
    normal = F.normalize(normal_features, dim=-1) @ text.T / temperature        # [B, 2]: s(CF+, T+), s(CF+, T−)
    anomalous = F.normalize(anomalous_features, dim=-1) @ text.T / temperature  # [B, 2]: s(CF−, T+), s(CF−, T−)
    # -log(e^a / (e^a + e^b)) = softplus(b - a)
    image_to_text = F.softplus(normal[:, 1] - normal[:, 0]) + F.softplus(anomalous[:, 0] - anomalous[:, 1])
    text_to_image = F.softplus(anomalous[:, 0] - normal[:, 0]) + F.softplus(normal[:, 1] - anomalous[:, 1])
    return image_to_text.mean(), text_to_image.mean()
