"""Image- and pixel-level detection metrics as pure functions.

Every function takes numpy arrays or torch tensors, validates shapes, and returns a
float in [0, 1]. Threshold-free metrics come from scikit-learn; F1-max is the best F1
over all thresholds of the precision-recall curve, as WinCLIP and the CLIP-AD papers
report it.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


class MetricInputError(ValueError):
    """Raised when metric inputs have the wrong shape, type or content."""


def to_numpy(values, name: str) -> np.ndarray:
    """Convert a torch tensor, list or array to a numpy array (no copy when possible)."""
    if hasattr(values, "detach"):  # torch.Tensor without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise MetricInputError(f"{name} must be numeric, got an object array")
    return array


def _labels_and_scores(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and check a (binary label, score) pair; both classes must be present."""
    labels = to_numpy(labels, f"{name} labels")
    scores = to_numpy(scores, f"{name} scores")
    if labels.shape != scores.shape:
        raise MetricInputError(
            f"{name}: labels have shape {labels.shape} but scores have shape {scores.shape}; "
            "they must match element for element"
        )
    labels = labels.reshape(-1)
    scores = scores.reshape(-1).astype(np.float64, copy=False)
    if labels.size == 0:
        raise MetricInputError(f"{name}: got no samples")
    if not np.all(np.isfinite(scores)):
        raise MetricInputError(f"{name}: scores contain NaN or infinity")
    unique = np.unique(labels)
    if not np.all(np.isin(unique, (0, 1))):
        raise MetricInputError(f"{name}: labels must be 0 (normal) or 1 (anomalous), found {unique[:10]}")
    if unique.size < 2:
        raise MetricInputError(
            f"{name}: needs both normal and anomalous samples, found only label {unique[0]}; "
            "a split with one class has no AUROC/AUPR/F1"
        )
    return labels.astype(np.int8, copy=False), scores


def _masks_and_maps(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Check [N, H, W] ground-truth masks against [N, H, W] anomaly maps."""
    masks = to_numpy(masks, "masks")
    maps = to_numpy(maps, "anomaly maps")
    if masks.ndim != 3 or maps.ndim != 3:
        raise MetricInputError(
            f"pixel metrics expect masks and maps of shape [N, H, W], got {masks.shape} and {maps.shape}"
        )
    if masks.shape != maps.shape:
        raise MetricInputError(
            f"masks have shape {masks.shape} but anomaly maps have {maps.shape}; "
            "resize the maps to the mask resolution (bilinear) before scoring"
        )
    if not np.isfinite(maps).all():
        raise MetricInputError("anomaly maps contain NaN or infinity")
    return (masks > 0.5).astype(np.int8), maps


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores. labels [N] in {0,1}, scores [N]."""
    labels, scores = _labels_and_scores(labels, scores, "image_auroc")
    return float(roc_auc_score(labels, scores))


def image_aupr(labels, scores) -> float:
    """Average precision (area under the PR curve) of image scores."""
    labels, scores = _labels_and_scores(labels, scores, "image_aupr")
    return float(average_precision_score(labels, scores))


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def image_f1_max(labels, scores) -> float:
    """Best F1 over all thresholds of the image scores."""
    return _f1_max(*_labels_and_scores(labels, scores, "image_f1_max"))


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over all pixels. masks [N, H, W] (binary), maps [N, H, W]."""
    masks, maps = _masks_and_maps(masks, maps)
    return float(roc_auc_score(*_labels_and_scores(masks, maps, "pixel_auroc")))


def pixel_aupr(masks, maps) -> float:
    """Average precision over all pixels. masks [N, H, W], maps [N, H, W]."""
    masks, maps = _masks_and_maps(masks, maps)
    return float(average_precision_score(*_labels_and_scores(masks, maps, "pixel_aupr")))


def pixel_f1_max(masks, maps) -> float:
    """Best pixel F1 over all thresholds. masks [N, H, W], maps [N, H, W]."""
    masks, maps = _masks_and_maps(masks, maps)
    return _f1_max(*_labels_and_scores(masks, maps, "pixel_f1_max"))
