"""Zero-shot evaluation: train once on auxiliary data (if the method trains), evaluate every unseen category."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data import AnomalyDataset
from ..data.auxiliary import check_zero_shot
from ..methods.base import Detector, FitData
from ..results import RunOutcome, RunRecord, dataset_fingerprint, reusable_record, run_input_hash, run_recorded
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
    ``resume``, when every category's record is unchanged (same config, data, code), neither
    training nor evaluation runs again.
    """
    categories = list(categories or test.categories)
    auxiliary = list(auxiliary)
    check_zero_shot([c for d in auxiliary for c in d.categories], categories)
    protocol = evaluation_protocol(detector, aupro_variant)
    training_identity = [{"dataset": d.name, "files": dataset_fingerprint(d.records)} for d in auxiliary]
    identities = {
        c: {"test_files": dataset_fingerprint(test.subset(category=c).records, test_root),
            "auxiliary": training_identity}
        for c in categories
    }
    outcome = ZeroShotRun()
    if resume:
        existing = [reusable_record(results_dir, detector.name, "zero-shot", test.name, c, seed,
                                    run_input_hash(method=detector.name, tag="zero-shot", config=detector.config,
                                                   dataset=test.name, category=c, seed=seed, protocol=protocol,
                                                   identity=identities[c]))
                    for c in categories]
        if all(record is not None for record in existing):
            outcome.records, outcome.reused = existing, len(existing)
            return outcome
    if auxiliary:
        start = time.perf_counter()
        detector.fit(FitData(auxiliary=auxiliary))
        outcome.trained, outcome.fit_seconds = True, time.perf_counter() - start
    for category in categories:
        def run(category=category) -> RunOutcome:
            evaluation = evaluate_detector(detector, test.subset(category=category), batch_size=batch_size,
                                           aupro_variant=aupro_variant, desc=f"{detector.name} on {category}")
            if keep_evaluations:
                outcome.evaluations[category] = evaluation
            return RunOutcome(evaluation.metrics, {"fit_s": outcome.fit_seconds, **evaluation.timings})

        record, reused = run_recorded(results_dir=results_dir, method=detector.name, config=detector.config,
                                      dataset=test.name, category=category, seed=seed, protocol=protocol, run=run,
                                      tag="zero-shot", identity=identities[category], device=device, resume=False)
        outcome.records.append(record)
    return outcome
