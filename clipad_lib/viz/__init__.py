"""Pictures and widgets: sample grids, anomaly-map overlays, an interactive heatmap explorer."""
from .figures import anomaly_overlays, heatmap_explorer, sample_grid, save_figure

__all__ = ["anomaly_overlays", "heatmap_explorer", "sample_grid", "save_figure"]
