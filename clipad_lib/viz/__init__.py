"""Pictures and widgets: sample grids, anomaly-map overlays, an interactive heatmap explorer,
score histograms, t-SNE and metric-vs-setting lines, patch-embedding projections (PCA / t-SNE),
HSF cluster figures, the interactive embedding explorer, and the pretraining run's figures."""
from .analysis import metric_lines, score_histograms, tsne_scatter
from .embeddings import (embedding_explorer, embedding_scatter, hsf_cluster_figure, hsf_explorer, patch_labels,
                         project_embeddings)
from .figures import anomaly_overlays, heatmap_explorer, sample_grid, save_figure
from .pretraining import captioned_samples, training_figures

__all__ = ["anomaly_overlays", "captioned_samples", "embedding_explorer", "embedding_scatter", "heatmap_explorer", "hsf_cluster_figure", "hsf_explorer",
           "metric_lines", "patch_labels", "project_embeddings", "sample_grid", "save_figure", "score_histograms",
           "training_figures", "tsne_scatter"]
