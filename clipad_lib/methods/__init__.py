"""One module per method; each a config dataclass plus a Detector with fit/predict."""
from .base import Detector, FitData, Prediction, gaussian_smooth, upsample_maps
from .patchcore import PatchCoreConfig, PatchCoreDetector

METHODS = {"patchcore": (PatchCoreConfig, PatchCoreDetector)}

__all__ = ["METHODS", "Detector", "FitData", "PatchCoreConfig", "PatchCoreDetector", "Prediction",
           "gaussian_smooth", "upsample_maps"]
