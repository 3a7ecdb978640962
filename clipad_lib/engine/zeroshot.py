"""Zero-shot evaluation: train once on auxiliary data (if the method trains), then evaluate every
unseen category of every test set that training serves."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data import AnomalyDataset
from ..data.auxiliary import check_zero_shot
from ..methods.base import Detector, FitData
from ..results import ZERO_SHOT, RunOutcome, RunRecord, RunSpec, dataset_fingerprint, sample_columns
from .evaluate import Evaluation, check_precision_for, evaluate_detector, evaluation_protocol


@dataclass
class ZeroShotRun:
    records: list[RunRecord] = field(default_factory=list)
    reused: int = 0
    trained: bool = False
    fit_seconds: float = 0.0
    evaluations: dict[tuple[str, str], Evaluation] = field(default_factory=dict)  # (dataset, category)


def auxiliary_identity(auxiliary: Sequence[AnomalyDataset]) -> list[dict]:
    """What a run records of its auxiliary training data: each dataset's name and files' fingerprint."""
    return [{"dataset": d.name, "files": dataset_fingerprint(d.records)} for d in auxiliary]


def run_zero_shot(detector: Detector, *, tests: Sequence[tuple[AnomalyDataset, Path]],
                  auxiliary: Sequence[AnomalyDataset] = (), results_dir: Path, seed: int = 0, variant: str = "",
                  resume: bool = False, batch_size: int = 8, aupro_variant: str = "mvtec", device: str = "cpu",
                  keep_evaluations: bool = False, always_fit: bool = False, precision: str = "fp32") -> ZeroShotRun:
    """Fit ``detector`` once on ``auxiliary`` (skipped for methods without training) and evaluate
    every category of every ``(test set, its root)``, one run record each.

    The auxiliary categories must not overlap any test category (refused otherwise). With
    ``resume``, every category whose record is unchanged (same config, data, code) is read back;
    training runs only when some category is left to evaluate — and then once for all test sets.
    ``precision`` is the evaluation's (:func:`evaluate_detector`); a value that cannot be used is
    refused before any training, and a reduced one is part of every record's protocol.
    """
    auxiliary = list(auxiliary)
    for test, _ in tests:
        check_zero_shot([c for d in auxiliary for c in d.categories], test.categories)
    check_precision_for(detector, precision)
    protocol = evaluation_protocol(detector, aupro_variant, precision=precision)
    training_identity = auxiliary_identity(auxiliary)
    train_data = "+".join(d.name for d in auxiliary)
    jobs = [(test, root, category) for test, root in tests for category in test.categories]
    specs = {
        (test.name, category): RunSpec(
            method=detector.name, setting=ZERO_SHOT, variant=variant, train_data=train_data, dataset=test.name,
            category=category,
            seed=seed, config=detector.config, protocol=protocol,
            identity={"test_files": dataset_fingerprint(test.subset(category=category).records, root),
                      "auxiliary": training_identity})
        for test, root, category in jobs
    }
    reused = {key: spec.reusable(results_dir) for key, spec in specs.items()} if resume else {}
    outcome = ZeroShotRun()
    if (always_fit or any(reused.get(key) is None for key in specs)) and auxiliary:
        start = time.perf_counter()
        detector.fit(FitData(auxiliary=auxiliary, seed=seed))
        outcome.trained, outcome.fit_seconds = True, time.perf_counter() - start
    for test, root, category in jobs:
        key = (test.name, category)
        if reused.get(key) is not None:
            outcome.records.append(reused[key])
            outcome.reused += 1
            continue
        test_category = test.subset(category=category)
        evaluation = evaluate_detector(detector, test_category, batch_size=batch_size, aupro_variant=aupro_variant,
                                       desc=f"{detector.name} on {test.name}/{category}", precision=precision)
        if keep_evaluations:
            outcome.evaluations[key] = evaluation
        result = RunOutcome(evaluation.metrics, {"fit_s": outcome.fit_seconds, **evaluation.timings},
                            sample_columns(test_category.records, evaluation.image_scores, root))
        outcome.records.append(specs[key].write(results_dir, result, device))
    return outcome
