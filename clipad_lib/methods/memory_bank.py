"""What the memory-bank detectors share: coreset subsampling and nearest-neighbour distances.

Used by PatchCore (:mod:`.patchcore`), SPADE (:mod:`.spade`) and the CLIP-token patch memory
(:mod:`.clip_patch_memory`). Hand-written on torch because the official codes' faiss is not a
dependency of this workbook and exact search on a few hundred thousand rows is one matrix product
per chunk on a GPU.
"""
from __future__ import annotations

import torch

# Rows of queries per distance matrix: bounds memory at QUERY_CHUNK x bank rows floats.
QUERY_CHUNK = 4096


def approximate_greedy_coreset(features: torch.Tensor, count: int, projection_dim: int = 128,
                               starting_points: int = 10, seed: int = 0) -> torch.Tensor:
    """Indices of ``count`` rows of ``features`` [M, C] chosen by greedy k-center selection.

    As PatchCore's official ``ApproximateGreedyCoresetSampler`` (PatchCore Alg. 1, supp. A):
    distances are taken in a random projection to ``projection_dim`` dimensions; each row starts at
    its mean distance to ``starting_points`` random rows (no M x M matrix), then the row farthest
    from the coreset joins it ``count`` times. The projection is a seeded Gaussian matrix (the
    official code uses an untrained ``nn.Linear``: another random projection of the same kind).
    Returns [count] int64, in the order chosen.
    """
    if not 1 <= count <= len(features):
        raise ValueError(f"a coreset of {count} rows cannot be drawn from {len(features)} rows")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    features = features.float()
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator).to(features)
        features = features @ projection
    starts = torch.randperm(len(features), generator=generator)[:min(starting_points, len(features))]
    distance = torch.cdist(features, features[starts.to(features.device)]).mean(dim=1)  # [M]
    chosen = torch.empty(count, dtype=torch.long)
    for step in range(count):
        index = int(torch.argmax(distance))
        chosen[step] = index
        distance = torch.minimum(distance, torch.linalg.vector_norm(features - features[index], dim=1))
    return chosen


def subsample(bank: torch.Tensor, ratio: float, projection_dim: int = 128, starting_points: int = 10,
              seed: int = 0) -> torch.Tensor:
    """The coreset of ``bank`` [M, C] keeping ``int(M * ratio)`` rows (at least 1); ratio 1 keeps all."""
    if ratio >= 1.0:
        return bank
    count = max(1, int(len(bank) * ratio))
    return bank[approximate_greedy_coreset(bank, count, projection_dim, starting_points, seed).to(bank.device)]


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, squared: bool = False) -> torch.Tensor:
    """Euclidean distances of each query [Q, C] to its ``k`` nearest rows of ``bank`` [M, C].

    Returns [Q, k], nearest first. ``squared`` gives squared distances, which is what faiss's
    ``IndexFlatL2`` (the official PatchCore scorer) returns. Queries go in chunks of
    :data:`QUERY_CHUNK` so memory stays bounded.
    """
    if queries.shape[-1] != bank.shape[-1]:
        raise ValueError(f"queries have {queries.shape[-1]} channels but the memory bank has {bank.shape[-1]}")
    k = min(k, len(bank))
    parts = []
    for start in range(0, len(queries), QUERY_CHUNK):
        distance = torch.cdist(queries[start:start + QUERY_CHUNK], bank)
        parts.append(torch.topk(distance, k, dim=1, largest=False).values)
    nearest = torch.cat(parts)
    return nearest.square() if squared else nearest
