"""One module per method; each a config dataclass plus a Detector with fit/predict."""
from .base import Detector, FitData, Prediction, gaussian_smooth, upsample_maps
from .adaclip import AdaCLIPConfig, AdaCLIPDetector
from .aprilgan import AprilGANConfig, AprilGANDetector
from .winclip import WinCLIPConfig, WinCLIPDetector
from .patchcore import PatchCoreConfig, PatchCoreDetector

METHODS = {"patchcore": (PatchCoreConfig, PatchCoreDetector), "adaclip": (AdaCLIPConfig, AdaCLIPDetector),
           "aprilgan": (AprilGANConfig, AprilGANDetector), "winclip": (WinCLIPConfig, WinCLIPDetector)}

__all__ = ["METHODS", "AdaCLIPConfig", "AdaCLIPDetector", "AprilGANConfig", "AprilGANDetector", "Detector", "FitData", "PatchCoreConfig", "PatchCoreDetector", "Prediction", "WinCLIPConfig", "WinCLIPDetector",
           "gaussian_smooth", "upsample_maps"]
