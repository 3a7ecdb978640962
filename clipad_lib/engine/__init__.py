"""Loops that drive detectors: evaluation, few-shot and zero-shot runs with their records.

``FeatureCache`` and ``seed_everything`` live below the methods (``clipad_lib.feature_cache``,
``clipad_lib.seeding``) and are re-exported here for the notebooks that drive them.
"""
from .evaluate import Evaluation, evaluate_detector, evaluation_protocol, load_reference_images
from ..feature_cache import FeatureCache
from .fewshot import FewShotRun, fit_few_shot, run_few_shot
from .zeroshot import ZeroShotRun, run_zero_shot
from ..seeding import seed_everything

__all__ = ["Evaluation", "FeatureCache", "FewShotRun", "ZeroShotRun", "run_zero_shot", "fit_few_shot", "run_few_shot", "evaluate_detector", "evaluation_protocol", "load_reference_images", "seed_everything"]
