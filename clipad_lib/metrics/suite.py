"""All the image and pixel metrics of one evaluation, skipping those the data cannot support."""
from __future__ import annotations

import numpy as np

from .classification import image_aupr, image_auroc, image_f1_max, pixel_aupr, pixel_auroc, pixel_f1_max
from .pro import aupro

IMAGE_METRICS = ("image_auroc", "image_aupr", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_aupr", "pixel_f1_max", "aupro")


def detection_metrics(labels, image_scores, masks=None, anomaly_maps=None, *, aupro_variant: str = "mvtec",
                      fpr_limit: float = 0.3) -> dict[str, float | None]:
    """Compute every applicable metric.

    Image metrics need both normal and anomalous images; pixel metrics need masks with at
    least one anomalous pixel. A metric that does not apply is None (segmentation-only
    datasets such as ClinicDB have no normal image, so no image AUROC).

    Args:
        labels: [N] in {0, 1}; image_scores: [N].
        masks: [N, H, W] binary or None; anomaly_maps: [N, H, W] or None.
    """
    labels = np.asarray(labels)
    result: dict[str, float | None] = dict.fromkeys(IMAGE_METRICS + PIXEL_METRICS)
    if np.unique(labels).size == 2:
        result["image_auroc"] = image_auroc(labels, image_scores)
        result["image_aupr"] = image_aupr(labels, image_scores)
        result["image_f1_max"] = image_f1_max(labels, image_scores)
    if masks is not None and anomaly_maps is not None and np.any(masks):
        result["pixel_auroc"] = pixel_auroc(masks, anomaly_maps)
        result["pixel_aupr"] = pixel_aupr(masks, anomaly_maps)
        result["pixel_f1_max"] = pixel_f1_max(masks, anomaly_maps)
        result["aupro"] = aupro(masks, anomaly_maps, fpr_limit=fpr_limit, variant=aupro_variant)
    return result
