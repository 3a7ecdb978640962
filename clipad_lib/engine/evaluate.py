"""The evaluate loop: transform, predict, collect, score."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import AnomalyDataset, SampleRecord, load_sample
from ..data.transforms import ImageTransform, TransformedDataset
from ..methods.base import Detector
from ..metrics import detection_metrics


@dataclass
class Evaluation:
    """Predictions and metrics of one detector on one dataset split.

    image_scores, labels: [N]; anomaly_maps: [N, S, S] float32 (None for classification-only
    methods); masks: [N, S, S] bool.
    """

    metrics: dict[str, float | None]
    image_scores: np.ndarray
    labels: np.ndarray
    anomaly_maps: np.ndarray | None
    masks: np.ndarray
    paths: list[Path]
    protocol: dict
    timings: dict = field(default_factory=dict)


def load_reference_images(records: list[SampleRecord], transform: ImageTransform) -> torch.Tensor:
    """Decode and transform k-shot reference images -> [K, 3, S, S]."""
    return torch.stack([transform.image(load_sample(r).image) for r in records])


# Choices where the official code bases differ from each other or from their papers; a config
# that has the field records it (see each method's docstring for the source of its default).
FIDELITY_FIELDS = ("smoothing_boundary", "kmeans", "text_ensemble")


def evaluation_protocol(detector: Detector, aupro_variant: str = "mvtec", fpr_limit: float = 0.3) -> dict:
    """How an evaluation scores maps: stored in every run record and part of its input hash.

    Besides resolution, transform and metric recipe it names the fidelity switches: the
    backbone's activation and positional-embedding resize, the smoothing boundary, HSF's k-means
    and the text ensemble, where the method has them.
    """
    transform = detector.transform
    config = detector.config
    backbone_protocol = getattr(detector.backbone, "protocol", None)
    return {
        "resolution": transform.size,
        "transform": transform.describe(),
        "mask_interpolation": transform.mask_interpolation,
        "map_interpolation": "bilinear",
        "gaussian_sigma": getattr(config, "gaussian_sigma", None),
        **(backbone_protocol() if backbone_protocol is not None else {}),
        **{name: getattr(config, name) for name in FIDELITY_FIELDS if hasattr(config, name)},
        "aupro_variant": aupro_variant,
        "aupro_fpr_limit": fpr_limit,
    }


def evaluate_detector(detector: Detector, dataset: AnomalyDataset, *, batch_size: int = 8, num_workers: int = 0,
                      aupro_variant: str = "mvtec", progress: bool = True, desc: str | None = None) -> Evaluation:
    """Run ``detector.predict`` over ``dataset`` and compute every applicable metric.

    Maps are scored at the detector's input resolution against masks resized there with
    nearest-neighbour interpolation; the protocol dict records exactly that.
    """
    transform = detector.transform
    loader = torch.utils.data.DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    scores, labels, maps, masks = [], [], [], []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc or f"{detector.name} on {dataset.name}", disable=not progress, leave=False):
        prediction = detector.predict(batch["image"], list(batch["category"]))
        if prediction.anomaly_maps is None:
            if detector.localizes:
                raise ValueError(f"{detector.name} returned no anomaly maps but declares that it localizes")
        elif prediction.anomaly_maps.shape[-2:] != batch["mask"].shape[-2:]:
            raise ValueError(
                f"{detector.name} returned maps of size {tuple(prediction.anomaly_maps.shape[-2:])} for inputs of "
                f"size {tuple(batch['mask'].shape[-2:])}; predict must return maps at the input resolution"
            )
        scores.append(prediction.image_scores.float().numpy())
        if prediction.anomaly_maps is not None:
            maps.append(prediction.anomaly_maps.float().numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy())
    predict_seconds = time.perf_counter() - start
    image_scores, labels_array = np.concatenate(scores), np.concatenate(labels)
    masks_array = np.concatenate(masks)
    anomaly_maps = np.concatenate(maps) if maps else None
    image_scores = detector.finalize_scores(image_scores, anomaly_maps, [r.category for r in dataset.records])
    start = time.perf_counter()
    pixel_masks = masks_array if dataset.has_pixel_labels and anomaly_maps is not None else None
    metrics = detection_metrics(labels_array, image_scores, pixel_masks, anomaly_maps, aupro_variant=aupro_variant)
    protocol = evaluation_protocol(detector, aupro_variant)
    timings = {
        "predict_s": predict_seconds,
        "ms_per_image": 1000 * predict_seconds / max(len(dataset), 1),
        "metrics_s": time.perf_counter() - start,
    }
    return Evaluation(metrics, image_scores, labels_array, anomaly_maps, masks_array,
                      [r.image_path for r in dataset.records], protocol, timings)
