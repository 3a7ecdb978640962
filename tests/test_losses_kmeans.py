import math
import time

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from clipad_lib.losses import dice_loss, focal_loss
from clipad_lib.methods.kmeans import batched_kmeans
from clipad_lib.methods.text_prompts import ADACLIP_ENSEMBLE, prompt_class_name, state_embeddings


def test_focal_loss_hand_computed():
    # p_t = 0.8 (+1e-5 floor) for a correct class 1 with probability 0.8: -(0.2)^2 * log(0.8).
    probabilities = torch.tensor([[0.2, 0.8]])
    expected = -((1 - 0.8 - 1e-5 * 0) ** 2) * math.log(0.8)
    smoothed = 0.8 * (1 - 1e-5) + 0.2 * 1e-5 + 1e-5
    assert focal_loss(probabilities, torch.tensor([1])).item() == pytest.approx(
        -((1 - smoothed) ** 2) * math.log(smoothed), rel=1e-6)
    assert focal_loss(probabilities, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-3)
    # Maps: [B, 2, H, W] with a [B, H, W] target; confident right answers cost ~0.
    maps = torch.zeros(1, 2, 2, 2)
    maps[:, 1] = 1.0
    assert focal_loss(maps, torch.ones(1, 2, 2)).item() == pytest.approx(0.0, abs=1e-6)
    assert focal_loss(maps, torch.zeros(1, 2, 2)).item() > 5


def test_dice_loss_hand_computed():
    prediction = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    truth = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # (2 * 1 + 1) / (1.5 + 2 + 1) = 3 / 4.5
    assert dice_loss(prediction, truth).item() == pytest.approx(1 - 3 / 4.5)
    assert dice_loss(truth, truth).item() == pytest.approx(0.0)


def test_prompt_ensemble_sentences_and_state_embeddings():
    sentences = ADACLIP_ENSEMBLE.sentences(prompt_class_name("pipe-fryum"))
    assert len(sentences) == (7 + 5) * 4 and ADACLIP_ENSEMBLE.normal_count == 28
    assert sentences[0] == "a bad photo of a pipe fryum." and sentences[-1] == "a cropped photo of the pipe fryum with damage."
    embeddings = torch.randn(3, 48, 8)
    states = state_embeddings(embeddings, 28)
    assert states.shape == (3, 2, 8)
    torch.testing.assert_close(states.norm(dim=-1), torch.ones(3, 2))
    normal = torch.nn.functional.normalize(embeddings[1, :28], dim=-1).mean(0)
    torch.testing.assert_close(states[1, 0], normal / normal.norm())


def _blobs(batch, per_cluster, clusters, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (batch, clusters, 1, dim))
    points = centres + rng.normal(0, 0.5, (batch, clusters, per_cluster, dim))
    order = rng.permuted(np.tile(np.arange(clusters * per_cluster), (batch, 1)), axis=1)
    points = points.reshape(batch, clusters * per_cluster, dim)
    return np.take_along_axis(points, order[..., None], axis=1).astype(np.float32)


def test_kmeans_matches_scikit_learn_up_to_label_permutation():
    points = _blobs(batch=4, per_cluster=25, clusters=6, dim=16, seed=0)
    labels, centres = batched_kmeans(torch.from_numpy(points), 6, seed=0)
    assert labels.shape == (4, 150) and centres.shape == (4, 6, 16)
    for b in range(4):
        reference = KMeans(n_clusters=6, n_init="auto", random_state=0).fit_predict(points[b])
        assert adjusted_rand_score(reference, labels[b].numpy()) == pytest.approx(1.0)


def test_kmeans_is_deterministic_per_seed():
    points = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 100, 8)).astype(np.float32))
    first = batched_kmeans(points, 10, seed=5)
    second = batched_kmeans(points, 10, seed=5)
    torch.testing.assert_close(first[1], second[1], rtol=0, atol=0)
    assert torch.equal(first[0], second[0])
    with pytest.raises(ValueError, match="cannot make 101 clusters"):
        batched_kmeans(points, 101)


def test_kmeans_batch_is_faster_than_one_sklearn_call_per_image():
    points = _blobs(batch=16, per_cluster=5, clusters=20, dim=64, seed=2)  # HSF-like: 100 tokens, K = 20
    batched_kmeans(torch.from_numpy(points), 20, seed=0)  # warm-up: torch's one-time kernel set-up
    KMeans(n_clusters=20, n_init="auto", random_state=0).fit(points[0])
    start = time.perf_counter()
    batched_kmeans(torch.from_numpy(points), 20, seed=0)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    for b in range(16):
        KMeans(n_clusters=20, n_init="auto", random_state=0).fit(points[b])
    theirs = time.perf_counter() - start
    assert ours < theirs, (ours, theirs)
