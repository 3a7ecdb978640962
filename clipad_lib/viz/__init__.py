"""Pictures and widgets: sample grids, anomaly-map overlays, score histograms, t-SNE and
metric-vs-setting lines, patch-embedding projections (PCA / t-SNE), HSF cluster figures, the
pretraining run's figures; and the interactive explorers (:mod:`.explorers`): embeddings, anomaly
maps across methods, run records."""
from .analysis import metric_lines, score_histograms, tsne_scatter
from .embeddings import embedding_scatter, hsf_cluster_figure, hsf_explorer, patch_labels, project_embeddings
from .explorers import (EmbeddingPoints, embedding_explorer, image_points, method_explorer, patch_points, run_browser,
                        text_points, worst_samples)
from .figures import anomaly_overlays, heatmap_explorer, sample_grid, save_figure
from .pretraining import captioned_samples, training_figures

__all__ = ["EmbeddingPoints", "anomaly_overlays", "captioned_samples", "embedding_explorer", "embedding_scatter",
           "heatmap_explorer", "hsf_cluster_figure", "hsf_explorer", "image_points", "method_explorer",
           "metric_lines", "patch_labels", "patch_points", "project_embeddings", "run_browser", "sample_grid",
           "save_figure", "score_histograms", "text_points", "training_figures", "tsne_scatter", "worst_samples"]
