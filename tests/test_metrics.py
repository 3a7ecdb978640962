import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from clipad_lib.metrics import (
    MetricInputError,
    detection_metrics,
    image_aupr,
    image_auroc,
    image_f1_max,
    mean_std,
    pixel_aupr,
    pixel_auroc,
    pixel_f1_max,
)


def test_image_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + labels * 0.3
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_aupr(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_f1_max_hand_computed():
    # Thresholds: >=0.9 -> P=1, R=1/2, F1=2/3; >=0.8 -> P=1/2, R=1/2; >=0.7 -> P=2/3, R=1, F1=0.8; >=0.1 -> P=1/2, R=1.
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.1]
    assert image_f1_max(labels, scores) == pytest.approx(0.8)


def test_perfect_and_reversed_scores():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert image_f1_max(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_accepts_torch_tensors():
    labels = torch.tensor([0, 1, 0, 1])
    scores = torch.tensor([0.1, 0.9, 0.3, 0.7])
    assert image_auroc(labels, scores) == 1.0


def test_pixel_metrics_match_flattened_scikit_learn():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 16, 16)) > 0.8
    maps = rng.random((3, 16, 16)) + masks * 0.4
    flat_masks, flat_maps = masks.ravel().astype(int), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_masks, flat_maps))
    assert pixel_aupr(masks, maps) == pytest.approx(average_precision_score(flat_masks, flat_maps))
    assert 0 < pixel_f1_max(masks, maps) <= 1


@pytest.mark.parametrize(
    "labels, scores, message",
    [
        ([0, 1, 1], [0.1, 0.2], "shape"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "both normal and anomalous"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "must be 0"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([], [], "no samples"),
    ],
)
def test_bad_image_inputs_fail_clearly(labels, scores, message):
    with pytest.raises(MetricInputError, match=message):
        image_auroc(np.array(labels), np.array(scores))


def test_pixel_metrics_reject_mismatched_maps():
    with pytest.raises(MetricInputError, match="resize the maps"):
        pixel_auroc(np.zeros((2, 8, 8)), np.zeros((2, 16, 16)))
    with pytest.raises(MetricInputError, match=r"\[N, H, W\]"):
        pixel_auroc(np.zeros((8, 8)), np.zeros((8, 8)))


def test_detection_metrics_skips_what_the_data_cannot_support():
    rng = np.random.default_rng(2)
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:5, 2:5] = True
    maps = rng.random((4, 8, 8)) + masks
    all_metrics = detection_metrics([0, 0, 1, 1], [0.1, 0.2, 0.9, 0.8], masks, maps)
    assert all(value is not None for value in all_metrics.values())
    segmentation_only = detection_metrics([1, 1], [0.5, 0.6], masks[2:], maps[2:])
    assert segmentation_only["image_auroc"] is None and segmentation_only["pixel_auroc"] is not None
    image_only = detection_metrics([0, 1], [0.1, 0.9])
    assert image_only["image_auroc"] == 1.0 and image_only["aupro"] is None


def test_mean_std_over_seeds():
    summary = mean_std([0.90, 0.92, 0.94])
    assert summary.mean == pytest.approx(0.92)
    assert summary.std == pytest.approx(0.02)
    assert summary.format() == "92.0 ± 2.0"
    assert mean_std([0.5]).std == 0.0
    with pytest.raises(ValueError, match="NaN"):
        mean_std([0.5, float("nan")])
