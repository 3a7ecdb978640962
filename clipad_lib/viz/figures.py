"""Figures built from samples and evaluations; notebooks call these and save the results."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..data import AnomalyDataset
from ..io import atomic_write


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a figure as PNG atomically (temporary file, then rename)."""
    return atomic_write(path, _png_bytes(figure, dpi))


def _png_bytes(figure, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    return buffer.getvalue()


def sample_grid(dataset: AnomalyDataset, per_category: int = 3, categories: Sequence[str] | None = None):
    """One row per category: a normal image, then anomalous images with their mask outlined."""
    categories = list(categories or dataset.categories)
    columns = per_category + 1
    figure, axes = plt.subplots(len(categories), columns, figsize=(1.9 * columns, 1.9 * len(categories)),
                                squeeze=False)
    for row, category in enumerate(categories):
        subset = dataset.subset(category=category)
        normal = [i for i, r in enumerate(subset.records) if r.label == 0][:1]
        anomalous = [i for i, r in enumerate(subset.records) if r.label == 1]
        step = max(1, len(anomalous) // per_category)
        for column, index in enumerate(normal + anomalous[::step][:per_category]):
            sample = subset[index]
            axis = axes[row, column]
            axis.imshow(sample.image)
            if sample.mask is not None:
                axis.contour(sample.mask, levels=[0.5], colors="magenta", linewidths=0.8)
            axis.set_title(f"{category}\n{sample.defect}", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    return figure


def anomaly_overlays(images: np.ndarray, anomaly_maps: np.ndarray, masks: np.ndarray, titles: Sequence[str],
                     alpha: float = 0.5):
    """Three rows per sample column: image, ground truth outline, anomaly map over the image.

    images: [N, S, S, 3] in [0, 1]; anomaly_maps: [N, S, S]; masks: [N, S, S] bool.
    Maps share one colour scale (min-max over the shown maps), so columns are comparable.
    """
    count = len(images)
    low, high = float(anomaly_maps.min()), float(anomaly_maps.max())
    figure, axes = plt.subplots(3, count, figsize=(2.0 * count, 6.2), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(images[column])
        axes[0, column].set_title(titles[column], fontsize=7)
        axes[1, column].imshow(images[column])
        if masks[column].any():
            axes[1, column].contour(masks[column], levels=[0.5], colors="lime", linewidths=0.8)
        axes[2, column].imshow(images[column])
        axes[2, column].imshow(anomaly_maps[column], cmap="jet", alpha=alpha, vmin=low, vmax=high)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].text(-0.1, 0.5, "image", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "ground truth", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    axes[2, 0].text(-0.1, 0.5, "anomaly map", transform=axes[2, 0].transAxes, rotation=90, va="center", ha="right")
    figure.tight_layout()
    return figure


def heatmap_explorer(images: np.ndarray, anomaly_maps: np.ndarray, masks: np.ndarray, titles: Sequence[str]):
    """One method's maps in :func:`~clipad_lib.viz.explorers.method_explorer`: sample slider
    (← / → when focused), ◀ ▶ buttons, threshold outline and overlay opacity. Returns the widget."""
    from .explorers import method_explorer

    return method_explorer(images, masks, {"anomaly map": anomaly_maps}, titles=titles).widget
