"""Zero-shot evaluation: train once on auxiliary data (if the method trains), evaluate every unseen category."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data import AnomalyDataset
from ..data.auxiliary import check_zero_shot
from ..methods.base import Detector, FitData
from ..results import ZERO_SHOT, RunOutcome, RunRecord, RunSpec, dataset_fingerprint
from .evaluate import Evaluation, evaluate_detector, evaluation_protocol


@dataclass
class ZeroShotRun:
    records: list[RunRecord] = field(default_factory=list)
    reused: int = 0
    trained: bool = False
    fit_seconds: float = 0.0
    evaluations: dict[str, Evaluation] = field(default_factory=dict)


def run_zero_shot(detector: Detector, *, test: AnomalyDataset, test_root: Path,
                  auxiliary: Sequence[AnomalyDataset] = (), results_dir: Path, seed: int = 0,
                  categories: Sequence[str] | None = None, resume: bool = False, batch_size: int = 8,
                  aupro_variant: str = "mvtec", device: str = "cpu", keep_evaluations: bool = False) -> ZeroShotRun:
    """Fit ``detector`` on ``auxiliary`` (skipped for methods without training) and evaluate per category.

    The auxiliary categories must not overlap the test categories (refused otherwise). With
    ``resume``, every category whose record is unchanged (same config, data, code) is read back;
    training runs only when some category is left to evaluate.
    """
    categories = list(categories or test.categories)
    auxiliary = list(auxiliary)
    check_zero_shot([c for d in auxiliary for c in d.categories], categories)
    protocol = evaluation_protocol(detector, aupro_variant)
    training_identity = [{"dataset": d.name, "files": dataset_fingerprint(d.records)} for d in auxiliary]
    specs = {
        c: RunSpec(method=detector.name, setting=ZERO_SHOT, dataset=test.name, category=c, seed=seed,
                   config=detector.config, protocol=protocol,
                   identity={"test_files": dataset_fingerprint(test.subset(category=c).records, test_root),
                             "auxiliary": training_identity})
        for c in categories
    }
    reused = {c: spec.reusable(results_dir) for c, spec in specs.items()} if resume else {}
    outcome = ZeroShotRun()
    missing = [c for c in categories if reused.get(c) is None]
    if missing and auxiliary:
        start = time.perf_counter()
        detector.fit(FitData(auxiliary=auxiliary))
        outcome.trained, outcome.fit_seconds = True, time.perf_counter() - start
    for category in categories:
        if reused.get(category) is not None:
            outcome.records.append(reused[category])
            outcome.reused += 1
            continue
        evaluation = evaluate_detector(detector, test.subset(category=category), batch_size=batch_size,
                                       aupro_variant=aupro_variant, desc=f"{detector.name} on {category}")
        if keep_evaluations:
            outcome.evaluations[category] = evaluation
        result = RunOutcome(evaluation.metrics, {"fit_s": outcome.fit_seconds, **evaluation.timings})
        outcome.records.append(specs[category].write(results_dir, result, device))
    return outcome
