"""Metrics: pure functions from labels/masks and scores/maps to numbers in [0, 1]."""
from .classification import (
    MetricInputError,
    image_aupr,
    image_auroc,
    image_f1_max,
    pixel_aupr,
    pixel_auroc,
    pixel_f1_max,
)
from .pro import AUPRO_VARIANTS, aupro, pro_curve
from .suite import IMAGE_METRICS, PIXEL_METRICS, detection_metrics
from .summary import MeanStd, mean_std

__all__ = [
    "AUPRO_VARIANTS",
    "IMAGE_METRICS",
    "MeanStd",
    "PIXEL_METRICS",
    "detection_metrics",
    "MetricInputError",
    "aupro",
    "image_aupr",
    "image_auroc",
    "image_f1_max",
    "mean_std",
    "pixel_aupr",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_curve",
]
