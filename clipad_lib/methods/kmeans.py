"""Batched k-means++ in torch: one clustering per batch element, on the tensors' device.

AdaCLIP's HSF clusters every test image's patch embeddings; its official code calls
scikit-learn once per image on the CPU. Here all images of a batch are clustered at once,
with k-means++ seeding (greedy, 2 + log K local trials, as scikit-learn does) and Lloyd
iterations, seeded by a torch.Generator so results are reproducible.
"""
from __future__ import annotations

import math

import torch


def _kmeans_plus_plus(points: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding. points [B, N, C] -> initial centres [B, K, C]."""
    batch, count, _ = points.shape
    trials = 2 + int(math.log(clusters))
    rows = torch.arange(batch, device=points.device)
    first = torch.randint(count, (batch,), generator=generator).to(points.device)
    centres = [points[rows, first]]
    closest = torch.cdist(points, centres[0][:, None]).squeeze(-1) ** 2  # [B, N]
    for _ in range(1, clusters):
        weights = closest.clamp_min(0) + 1e-12
        candidates = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator).to(points.device)
        candidate_points = points[rows[:, None], candidates]  # [B, T, C]
        distances = torch.cdist(candidate_points, points) ** 2  # [B, T, N]
        potentials = torch.minimum(distances, closest[:, None]).sum(dim=-1)  # [B, T]
        best = potentials.argmin(dim=1)
        centres.append(candidate_points[rows, best])
        closest = torch.minimum(closest, distances[rows, best])
    return torch.stack(centres, dim=1)


def batched_kmeans(points: torch.Tensor, clusters: int, seed: int = 0, max_iter: int = 300,
                   tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster every batch element's points independently.

    Args:
        points: [B, N, C].
        clusters: K <= N.
        seed: seeds the k-means++ draws.
        max_iter, tol: Lloyd iterations stop when no centre moves more than ``tol`` times the
            mean per-feature variance (scikit-learn's criterion) or after ``max_iter`` rounds.
    Returns:
        (labels [B, N] int64, centres [B, K, C]). A cluster that empties keeps its last centre.
    """
    if points.ndim != 3:
        raise ValueError(f"batched_kmeans expects [B, N, C] points, got {list(points.shape)}")
    batch, count, _ = points.shape
    if not 1 <= clusters <= count:
        raise ValueError(f"cannot make {clusters} clusters of {count} points")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    data = points.detach().float()
    centres = _kmeans_plus_plus(data, clusters, generator)
    threshold = tol * data.var(dim=1).mean(dim=-1)  # [B]
    for _ in range(max_iter):
        labels = torch.cdist(data, centres).argmin(dim=-1)  # [B, N]
        one_hot = torch.nn.functional.one_hot(labels, clusters).to(data.dtype)  # [B, N, K]
        sizes = one_hot.sum(dim=1)  # [B, K]
        sums = one_hot.transpose(1, 2) @ data  # [B, K, C]
        updated = torch.where(sizes[..., None] > 0, sums / sizes.clamp_min(1)[..., None], centres)
        shift = ((updated - centres) ** 2).sum(dim=-1).sum(dim=-1)  # [B]
        centres = updated
        if bool((shift <= threshold).all()):
            break
    labels = torch.cdist(data, centres).argmin(dim=-1)
    return labels, centres.to(points.dtype)
