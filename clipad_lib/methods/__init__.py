"""One module per method; each a config dataclass plus a Detector with fit/predict.

Importing this package imports every method module, and each registers its detector
(:mod:`.registry`): :func:`list_methods` is the one list of methods.
"""
from .base import Detector, FitData, Prediction, gaussian_smooth, upsample_maps
from .registry import FIT_KINDS, MethodEntry, create_detector, list_methods, method_entry, register_method
from .adaclip import AdaCLIPConfig, AdaCLIPDetector, HSFView
from .aprilgan import AprilGANConfig, AprilGANDetector
from .winclip import WinCLIPConfig, WinCLIPDetector
from .clip_patch_memory import CLIPPatchMemoryConfig, CLIPPatchMemoryDetector
from .clip_fsac import CLIPACConfig, CLIPACDetector, CLIPFSACConfig, CLIPFSACDetector
from .linear_heads import LinearHeadsConfig, LinearHeadsDetector, SAMLinearHeadsConfig
from .patchcore import PatchCoreConfig, PatchCoreDetector
from .padim import PaDiMConfig, PaDiMDetector
from .spade import SPADEConfig, SPADEDetector
from .anomalyclip import AnomalyCLIPConfig, AnomalyCLIPDetector
from .prompt_learners import (CoCoOpConfig, CoCoOpDetector, CoOpConfig, CoOpDetector, MaPLeConfig, MaPLeDetector,
                              PDTConfig, PDTDetector)

__all__ = ["FIT_KINDS", "AdaCLIPConfig", "AdaCLIPDetector", "AnomalyCLIPConfig", "AnomalyCLIPDetector",
           "CoCoOpConfig", "CoCoOpDetector", "CoOpConfig", "CoOpDetector", "MaPLeConfig", "MaPLeDetector",
           "PDTConfig", "PDTDetector", "AprilGANConfig", "AprilGANDetector", "CLIPACConfig",
           "CLIPACDetector", "CLIPFSACConfig", "CLIPFSACDetector", "Detector", "FitData", "HSFView", "LinearHeadsConfig", "LinearHeadsDetector", "MethodEntry", "PaDiMConfig", "PaDiMDetector", "PatchCoreConfig", "PatchCoreDetector",
           "SAMLinearHeadsConfig", "SPADEConfig", "SPADEDetector",
           "CLIPPatchMemoryConfig", "CLIPPatchMemoryDetector", "Prediction", "WinCLIPConfig", "WinCLIPDetector", "create_detector",
           "gaussian_smooth", "list_methods", "method_entry", "register_method", "upsample_maps"]
