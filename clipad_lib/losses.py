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
