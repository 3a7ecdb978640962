"""Few-shot evaluation: draw k references per (category, seed), fit, evaluate, record."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ..data import AnomalyDataset, sample_k_shot, write_k_shot_list
from ..data.auxiliary import check_zero_shot
from ..methods.base import Detector, FitData
from ..results import (RunOutcome, RunRecord, RunSpec, dataset_fingerprint, few_shot_setting, run_recorded,
                       sample_columns)
from .evaluate import Evaluation, check_precision_for, evaluate_detector, evaluation_protocol, load_reference_images
from .zeroshot import auxiliary_identity


@dataclass
class FewShotRun:
    records: list[RunRecord] = field(default_factory=list)
    reused: int = 0
    evaluations: dict[tuple[str, int], Evaluation] = field(default_factory=dict)


def fit_on_references(detector: Detector, references: list, seed: int) -> None:
    """Fit ``detector`` on the given normal reference records (``seed`` reaches it as ``FitData.seed``)."""
    categories = {r.category for r in references}
    if len(categories) != 1:
        raise ValueError(f"k-shot references must come from one category, got {sorted(categories)}")
    detector.fit(FitData(reference_images=load_reference_images(references, detector.transform),
                         class_name=categories.pop(), seed=seed))


def fit_few_shot(detector: Detector, train: AnomalyDataset, category: str, k: int | str, seed: int) -> list:
    """Fit ``detector`` on the seeded k-shot draw of ``category``; returns the chosen records."""
    references = sample_k_shot(train, category, k, seed)
    fit_on_references(detector, references, seed)
    return references


def run_few_shot(detector: Detector, *, train: AnomalyDataset, test: AnomalyDataset, root: Path, k: int | str,
                 seeds: Sequence[int], results_dir: Path, categories: Sequence[str] | None = None,
                 resume: bool = False, batch_size: int = 8, aupro_variant: str = "mvtec", device: str = "cpu",
                 keep_evaluations: bool = False, variant: str = "", auxiliary: Sequence[AnomalyDataset] = (),
                 fit_auxiliary: Callable[[], None] | None = None, auxiliary_seed: int = 0,
                 precision: str = "fp32") -> FewShotRun:
    """Evaluate ``detector`` k-shot on every (category, seed) and write one run record each.

    ``variant`` names an ablation of the method ("" for the method as configured); it is a field of
    every record, beside the setting ("4-shot").

    ``auxiliary``: the annotated datasets of other categories the detector trains on before the
    shots (``fit_auxiliary`` trains it with ``auxiliary_seed``, called before the first run that is
    not read back); they are refused if they share a category with ``test``, and recorded as the
    runs' ``train_data`` and, with the seed, in their identity. ``k`` may be ``FULL_SHOT``.

    The reference lists are written to ``results_dir/kshot/<dataset>/<category>/k<k>-seed<s>.json``
    so any number can be re-run on exactly the same references. With ``resume``, a run whose
    inputs and code are unchanged is read back instead of recomputed. ``precision`` is the
    evaluation's (:func:`evaluate_detector`), refused before any fit when it cannot be used.
    """
    outcome = FewShotRun()
    setting = few_shot_setting(k)
    label = f"{setting} {variant}" if variant else setting
    check_precision_for(detector, precision)
    protocol = evaluation_protocol(detector, aupro_variant, precision=precision)
    auxiliary = list(auxiliary)
    check_zero_shot([c for d in auxiliary for c in d.categories], test.categories)
    train_data = "+".join(d.name for d in auxiliary)
    training_identity = auxiliary_identity(auxiliary)
    jobs = [(c, s) for c in (categories or test.categories) for s in seeds]
    for category, seed in tqdm(jobs, desc=f"{detector.name} {label} on {test.name}"):
        references = sample_k_shot(train, category, k, seed)
        write_k_shot_list(Path(results_dir) / "kshot" / test.name / category / f"k{k}-seed{seed}.json",
                          references, dataset=test.name, category=category, k=k, seed=seed, root=root)
        test_category = test.subset(category=category)
        identity = {
            "test_files": dataset_fingerprint(test_category.records, root),
            "references": [str(r.image_path.relative_to(root)) for r in references],
            "k": k,
        }
        if auxiliary:
            identity["auxiliary"] = training_identity
            identity["auxiliary_seed"] = auxiliary_seed

        def run() -> RunOutcome:
            if fit_auxiliary is not None:
                fit_auxiliary()
            start = time.perf_counter()
            fit_on_references(detector, references, seed)
            fit_seconds = time.perf_counter() - start
            evaluation = evaluate_detector(detector, test_category, batch_size=batch_size,
                                           aupro_variant=aupro_variant, desc=f"{category} seed {seed}",
                                           precision=precision)
            if keep_evaluations:
                outcome.evaluations[(category, seed)] = evaluation
            return RunOutcome(evaluation.metrics, {"fit_s": fit_seconds, **evaluation.timings},
                              sample_columns(test_category.records, evaluation.image_scores, root))

        spec = RunSpec(method=detector.name, setting=setting, variant=variant, dataset=test.name, category=category,
                       seed=seed, config=detector.config, protocol=protocol, identity=identity, train_data=train_data)
        record, reused = run_recorded(spec, run, results_dir=results_dir, device=device, resume=resume)
        outcome.records.append(record)
        outcome.reused += int(reused)
    return outcome
