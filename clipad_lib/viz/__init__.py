"""Pictures and widgets: sample grids, anomaly-map overlays, an interactive heatmap explorer,
score histograms, t-SNE and metric-vs-setting lines."""
from .analysis import metric_lines, score_histograms, tsne_scatter
from .figures import anomaly_overlays, heatmap_explorer, sample_grid, save_figure

__all__ = ["anomaly_overlays", "heatmap_explorer", "metric_lines", "sample_grid", "save_figure", "score_histograms",
           "tsne_scatter"]
