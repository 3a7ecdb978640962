"""One module per method; each a config dataclass plus a Detector with fit/predict."""
from .base import Detector, FitData, Prediction, gaussian_smooth, upsample_maps
from .adaclip import AdaCLIPConfig, AdaCLIPDetector
from .aprilgan import AprilGANConfig, AprilGANDetector
from .winclip import WinCLIPConfig, WinCLIPDetector
from .patchcore import PatchCoreConfig, PatchCoreDetector
from .clip_fsac import CLIPACConfig, CLIPACDetector, CLIPFSACConfig, CLIPFSACDetector

METHODS = {"patchcore": (PatchCoreConfig, PatchCoreDetector), "adaclip": (AdaCLIPConfig, AdaCLIPDetector),
           "aprilgan": (AprilGANConfig, AprilGANDetector), "winclip": (WinCLIPConfig, WinCLIPDetector),
           "clip_ac": (CLIPACConfig, CLIPACDetector), "clip_fsac": (CLIPFSACConfig, CLIPFSACDetector)}

__all__ = ["METHODS", "CLIPACConfig", "CLIPACDetector", "CLIPFSACConfig", "CLIPFSACDetector", "AdaCLIPConfig", "AdaCLIPDetector", "AprilGANConfig", "AprilGANDetector", "Detector", "FitData", "PatchCoreConfig", "PatchCoreDetector", "Prediction", "WinCLIPConfig", "WinCLIPDetector",
           "gaussian_smooth", "upsample_maps"]
