"""One module per method; each a config dataclass plus a Detector with fit/predict.

Importing this package imports every method module, and each registers its detector
(:mod:`.registry`): :func:`list_methods` is the one list of methods.
"""
from .base import Detector, FitData, Prediction, gaussian_smooth, upsample_maps
from .registry import FIT_KINDS, MethodEntry, create_detector, list_methods, method_entry, register_method
from .adaclip import AdaCLIPConfig, AdaCLIPDetector
from .aprilgan import AprilGANConfig, AprilGANDetector
from .winclip import WinCLIPConfig, WinCLIPDetector
from .patchcore import PatchCoreConfig, PatchCoreDetector
from .clip_fsac import CLIPACConfig, CLIPACDetector, CLIPFSACConfig, CLIPFSACDetector

__all__ = ["FIT_KINDS", "AdaCLIPConfig", "AdaCLIPDetector", "AprilGANConfig", "AprilGANDetector", "CLIPACConfig",
           "CLIPACDetector", "CLIPFSACConfig", "CLIPFSACDetector", "Detector", "FitData", "MethodEntry",
           "PatchCoreConfig", "PatchCoreDetector", "Prediction", "WinCLIPConfig", "WinCLIPDetector", "create_detector",
           "gaussian_smooth", "list_methods", "method_entry", "register_method", "upsample_maps"]
