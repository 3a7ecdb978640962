"""Loops that drive detectors: evaluation, few-shot and zero-shot runs, experiment grids, and the
notebook context.

``FeatureCache`` and ``seed_everything`` live below the methods (``clipad_lib.feature_cache``,
``clipad_lib.seeding``) and are re-exported here for the notebooks that drive them.
"""
from .evaluate import Evaluation, evaluate_detector, evaluation_protocol, load_reference_images
from ..feature_cache import FeatureCache
from .fewshot import FewShotRun, fit_few_shot, run_few_shot
from .grid import (Experiment, ExperimentResult, FewShotProtocol, Job, Variant, ZeroShotPair, ZeroShotProtocol,
                   adaclip_protocol, anomalyclip_protocol, run_experiment, swap_protocol, variants)
from .zeroshot import ZeroShotRun, run_zero_shot
from .context import NotebookContext, notebook_context
from ..seeding import seed_everything

__all__ = ["Evaluation", "Experiment", "ExperimentResult", "FeatureCache", "FewShotProtocol", "FewShotRun", "Job",
           "NotebookContext", "Variant", "ZeroShotPair", "ZeroShotProtocol", "ZeroShotRun", "adaclip_protocol",
           "anomalyclip_protocol", "evaluate_detector", "evaluation_protocol", "fit_few_shot",
           "load_reference_images", "notebook_context", "run_experiment", "run_few_shot", "run_zero_shot",
           "seed_everything", "swap_protocol", "variants"]
