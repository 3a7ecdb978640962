"""Figures of scores and features: histograms per epoch, t-SNE, metric-vs-setting lines."""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.manifold import TSNE


def score_histograms(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], bins: int = 20):
    """One histogram per panel of normal (blue) and anomalous (red) image scores.

    panels: title -> (scores [N], labels [N] in {0, 1}); e.g. one panel per training epoch (Fig. 10).
    """
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for axis, (title, (scores, labels)) in zip(axes[0], panels.items()):
        scores, labels = np.asarray(scores), np.asarray(labels)
        edges = np.linspace(scores.min(), scores.max() + 1e-9, bins + 1)
        axis.hist(scores[labels == 0], bins=edges, alpha=0.6, color="tab:blue", label="normal")
        axis.hist(scores[labels == 1], bins=edges, alpha=0.6, color="tab:red", label="anomalous")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("anomaly score")
    axes[0][0].set_ylabel("images")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def tsne_scatter(features: Mapping[str, np.ndarray], labels: np.ndarray, seed: int = 0):
    """t-SNE of each feature set [N, C] (e.g. CLIP's and the adapted ones, Fig. 9), coloured by label."""
    labels = np.asarray(labels)
    figure, axes = plt.subplots(1, len(features), figsize=(3.4 * len(features), 3.2), squeeze=False)
    for axis, (title, values) in zip(axes[0], features.items()):
        values = np.asarray(values, dtype=np.float64)
        perplexity = float(min(30, max(2, (len(values) - 1) // 3)))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(values)
        for label, colour, name in ((0, "tab:blue", "normal"), (1, "tab:red", "anomalous")):
            chosen = labels == label
            axis.scatter(points[chosen, 0], points[chosen, 1], s=10, c=colour, label=name)
        axis.set_title(title, fontsize=9)
        axis.set_xticks([]); axis.set_yticks([])
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def metric_lines(frame: pd.DataFrame, x: str, line: str, value: str = "value", title: str = ""):
    """Mean (± std over seeds) of ``value`` against ``x``, one line per ``line`` (Fig. 7, 8, 11)."""
    figure, axis = plt.subplots(figsize=(4.8, 3.0))
    for name, group in frame.groupby(line, sort=False):
        stats = group.groupby(x, sort=False)[value].agg(["mean", "std"]).fillna(0.0)
        axis.errorbar([str(v) for v in stats.index], stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                      label=str(name))
    axis.set_xlabel(x); axis.set_ylabel(value); axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
