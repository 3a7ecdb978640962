"""The evaluate loop: transform, predict, collect, score."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import AnomalyDataset, SampleRecord, load_sample
from ..data.transforms import ImageTransform, TransformedDataset
from ..host_memory import reuse_freed_memory_for
from ..methods.base import Detector, Prediction
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


# Numeric precision of ``predict`` in an evaluation: "fp32" (the default: no autocast), or
# torch.autocast to bfloat16 / float16 (float16 only on CUDA).
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _device_type(detector: Detector, images: torch.Tensor | None = None) -> str:
    """Where ``predict`` computes: the images' device when they are already off the CPU, else the
    detector's (its config's ``device``, else its backbone's parameters), else "cpu"."""
    if images is not None and images.device.type != "cpu":
        return images.device.type
    device = getattr(getattr(detector, "config", None), "device", None)
    if device is not None:
        return torch.device(device).type
    parameters = getattr(getattr(detector, "backbone", None), "parameters", None)
    if parameters is not None:
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device.type
    return "cpu"


def precision_context(precision: str, device_type: str):
    """The context ``predict`` runs in: nothing for "fp32"; ``torch.autocast(device_type, dtype)``
    for "bf16" / "fp16". fp16 autocast is refused off CUDA (the CPU's reduced precision is bf16)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device_type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device, but predict runs on {device_type!r}: "
                         "use precision='bf16' on the CPU, or a CUDA device")
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPES[precision])


def _check_precision_for(detector: Detector, precision: str, device_type: str) -> None:
    """Fail before any work when ``precision`` cannot be used with this detector on this device."""
    precision_context(precision, device_type)  # raises for a bad value or fp16 off CUDA
    if precision != "fp32" and getattr(detector, "feature_cache", None) is not None:
        raise ValueError(f"precision={precision!r} with {detector.name}'s feature cache would store reduced-precision "
                         "embeddings under the same keys as fp32 ones; evaluate in fp32 or without the cache")


def check_precision_for(detector: Detector, precision: str) -> str:
    """``precision`` if ``detector`` can evaluate in it on its device, else the ValueError
    :func:`evaluate_detector` would raise (a bad name, fp16 off CUDA, reduced precision with a
    feature cache); the runners call it before any training."""
    if check_precision(precision) != "fp32":
        _check_precision_for(detector, precision, _device_type(detector))
    return precision


def predict_with_precision(detector: Detector, images: torch.Tensor, class_names: Sequence[str] | None,
                           precision: str = "fp32") -> Prediction:
    """``detector.predict(images, class_names)``, under autocast for "bf16" / "fp16".

    "fp32" calls predict exactly as before (no context, outputs untouched). Otherwise predict runs
    under ``torch.autocast`` on the device it computes on, and the scores and maps come back as
    float32 (maps None stay None).
    """
    if check_precision(precision) == "fp32":
        return detector.predict(images, class_names)
    device_type = _device_type(detector, images)
    _check_precision_for(detector, precision, device_type)
    with precision_context(precision, device_type):
        prediction = detector.predict(images, class_names)
    maps = prediction.anomaly_maps
    return Prediction(image_scores=prediction.image_scores.float(), anomaly_maps=None if maps is None else maps.float())


def evaluation_protocol(detector: Detector, aupro_variant: str = "mvtec", fpr_limit: float = 0.3,
                        precision: str = "fp32") -> dict:
    """How an evaluation scores maps: stored in every run record and part of its input hash.

    Besides resolution, transform and metric recipe it names the fidelity switches: the
    backbone's activation and positional-embedding resize, the smoothing boundary, HSF's k-means
    and the text ensemble, where the method has them. ``precision`` is recorded only when it is
    not "fp32", so fp32 protocols (and the hashes of existing records) are unchanged.
    """
    check_precision(precision)
    transform = detector.transform
    config = detector.config
    backbone_protocol = getattr(detector.backbone, "protocol", None)
    protocol = {
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
    if precision != "fp32":
        protocol["precision"] = precision
    return protocol


def evaluate_detector(detector: Detector, dataset: AnomalyDataset, *, batch_size: int = 8, num_workers: int = 0,
                      aupro_variant: str = "mvtec", progress: bool = True, desc: str | None = None,
                      precision: str = "fp32") -> Evaluation:
    """Run ``detector.predict`` over ``dataset`` and compute every applicable metric.

    Maps are scored at the detector's input resolution against masks resized there with
    nearest-neighbour interpolation; the protocol dict records exactly that.

    ``precision``: "fp32" (default; predict runs as it always has), or "bf16" / "fp16" to run
    predict under ``torch.autocast`` on the detector's device (fp16 only on CUDA; on the CPU use
    bf16). Scores and maps come back as float32 either way, and metrics are computed in full
    precision; the protocol then records the precision.
    """
    check_precision_for(detector, precision)  # fails before any work (fp16 off CUDA, a feature cache)
    reuse_freed_memory_for(_device_type(detector))  # CPU: no page fault per activation (host_memory)
    transform = detector.transform
    loader = torch.utils.data.DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    scores, labels, maps, masks = [], [], [], []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc or f"{detector.name} on {dataset.name}", disable=not progress, leave=False):
        prediction = predict_with_precision(detector, batch["image"], list(batch["category"]), precision)
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
    protocol = evaluation_protocol(detector, aupro_variant, precision=precision)
    timings = {
        "predict_s": predict_seconds,
        "ms_per_image": 1000 * predict_seconds / max(len(dataset), 1),
        "metrics_s": time.perf_counter() - start,
    }
    return Evaluation(metrics, image_scores, labels_array, anomaly_maps, masks_array,
                      [r.image_path for r in dataset.records], protocol, timings)
