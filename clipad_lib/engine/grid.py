"""Experiment grids: the sweep of a table as data, and the one loop that runs it.

An :class:`Experiment` is a method (a registry id, or a ``build`` callable for detectors that share
an encoder), the profile's config changes, named :class:`Variant` s (an ablation's config
changes) and a protocol — :class:`ZeroShotProtocol` (train→test pairs) or
:class:`FewShotProtocol` (datasets × shots × seeds). :meth:`Experiment.jobs` lists what will run
without touching data (scikit-learn's ``ParameterGrid``); :func:`run_experiment` runs it with
resume and returns the records (``GridSearchCV``'s loop, in one tested place). A notebook keeps
the grid visible as a small literal and makes one call.

A trained zero-shot model serves every test set of its pair and is never retrained per test set;
training-free methods ignore the pairs and evaluate each test set once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..data import FULL_SHOT, AnomalyDataset
from ..methods import create_detector, method_entry
from ..methods.base import Detector, FitData
from ..results import RunRecord, records_frame
from .fewshot import run_few_shot
from .zeroshot import run_zero_shot


@dataclass(frozen=True)
class Variant:
    """One row of an ablation: ``name`` is the run records' variant tag ("" = as configured),
    ``changes`` the config fields it sets, ``label`` how the paper's table prints it."""

    name: str = ""
    changes: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


def variants(literal: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None) -> tuple[Variant, ...]:
    """``{"prompts-none": {"static_prompts": False, ...}, ...}`` -> variants, in order."""
    labels = labels or {}
    return tuple(Variant(name, dict(changes), labels.get(name, name)) for name, changes in literal.items())


@dataclass(frozen=True)
class ZeroShotPair:
    """Train on ``train`` (auxiliary dataset names; empty for training-free methods), test on ``test``."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def train_data(self) -> str:
        return "+".join(self.train)


@dataclass(frozen=True)
class ZeroShotProtocol:
    pairs: tuple[ZeroShotPair, ...]
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        tested = [name for pair in self.pairs for name in pair.test]
        repeated = sorted({name for name in tested if tested.count(name) > 1})
        if repeated:
            raise ValueError(f"test sets {repeated} appear in more than one train→test pair; each test set is "
                             "served by exactly one trained model")
        for pair in self.pairs:
            both = sorted(set(pair.train) & set(pair.test))
            if both:
                raise ValueError(f"{', '.join(both)} would be both auxiliary and test data in {pair}")

    @property
    def test_datasets(self) -> list[str]:
        return [name for pair in self.pairs for name in pair.test]

    def train_data_of(self, test: str) -> str:
        """The auxiliary data of the pair that tests ``test``."""
        for pair in self.pairs:
            if test in pair.test:
                return pair.train_data
        raise KeyError(f"{test!r} is not a test set of this protocol; its test sets: {', '.join(self.test_datasets)}")


def swap_protocol(test_datasets: Sequence[str], default: Sequence[str], alternate: Sequence[str],
                  seeds: Sequence[int] = (0,)) -> ZeroShotProtocol:
    """Train on ``default`` and test on every other dataset; test the ``default`` datasets after
    training on ``alternate``. Datasets of ``alternate`` are tested under ``default`` training."""
    default, alternate = tuple(default), tuple(alternate)
    served_by_alternate = tuple(d for d in test_datasets if d in default)
    served_by_default = tuple(d for d in test_datasets if d not in default)
    pairs = [ZeroShotPair(train, tests) for train, tests in ((default, served_by_default),
                                                             (alternate, served_by_alternate)) if tests]
    return ZeroShotProtocol(tuple(pairs), tuple(seeds))


def adaclip_protocol(test_datasets: Sequence[str], seeds: Sequence[int] = (0,)) -> ZeroShotProtocol:
    """AdaCLIP §5.1: train on MVTec AD + ClinicDB, test on every other dataset; MVTec AD and
    ClinicDB are tested after training on VisA + ColonDB."""
    return swap_protocol(test_datasets, ("mvtec", "clinicdb"), ("visa", "colondb"), seeds)


def anomalyclip_protocol(test_datasets: Sequence[str], seeds: Sequence[int] = (0,)) -> ZeroShotProtocol:
    """AnomalyCLIP's protocol (AdaCLIP supp. §4, Tab. 6-7): train on MVTec AD only, and test MVTec
    AD after training on VisA."""
    return swap_protocol(test_datasets, ("mvtec",), ("visa",), seeds)


@dataclass(frozen=True)
class FewShotProtocol:
    """datasets x shots x seeds: each (category, seed) fits the method on k normal shots and tests it.

    ``shots`` holds numbers of shots or ``"full"`` (every normal training image: full-shot).
    ``auxiliary`` is for methods that also train on annotated data of *other* categories before the
    shots (APRIL-GAN's few-shot branch): test dataset -> the datasets its model trains on, once for
    every shot and seed of that dataset; methods that do not train on auxiliary data ignore it.
    """

    datasets: tuple[str, ...]
    shots: tuple[int | str, ...]
    seeds: tuple[int, ...]
    categories: tuple[str, ...] | None = None  # None: every category
    auxiliary: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self):
        for k in self.shots:
            if k != FULL_SHOT and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
                raise ValueError(f"shots must be positive numbers or {FULL_SHOT!r}, got {list(self.shots)}")
        if self.auxiliary is not None:
            unknown = set(self.auxiliary) - set(self.datasets)
            if unknown:
                raise ValueError(f"auxiliary names test datasets {sorted(unknown)} that are not in {list(self.datasets)}")
            object.__setattr__(self, "auxiliary", {name: tuple(train) for name, train in self.auxiliary.items()})

    def auxiliary_of(self, dataset: str) -> tuple[str, ...]:
        return tuple((self.auxiliary or {}).get(dataset, ()))


@dataclass(frozen=True)
class Job:
    """One unit of work: a variant, its seed, and either a train→test pair or a (dataset, k)."""

    variant: Variant
    seed: int | None = None
    pair: ZeroShotPair | None = None
    dataset: str | None = None
    shots: int | str | None = None  # a number of shots or FULL_SHOT


class DataSource(Protocol):
    """Where an experiment reads datasets by name (the notebook context is one)."""

    def dataset(self, name: str, split: str = "test",
                categories: Sequence[str] | None = None) -> tuple[AnomalyDataset, Path]: ...


Builder = Callable[[Variant, "str | None"], Detector]


@dataclass(frozen=True)
class Experiment:
    """A method, its changes for this profile, its variants and the protocol (see the module doc).

    ``build(variant, dataset)`` builds a detector where the registry's plain construction does not
    do (a shared frozen encoder, a feature cache, dataset presets); ``dataset`` is None in
    zero-shot jobs. Without it, ``create_detector(method, **changes, **variant.changes)``.
    """

    method: str
    protocol: ZeroShotProtocol | FewShotProtocol
    changes: Mapping[str, Any] = field(default_factory=dict)
    variants: tuple[Variant, ...] = (Variant(),)
    build: Builder | None = None

    def __post_init__(self):
        method_entry(self.method)  # an unknown method fails here, listing the registered ones
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat in {names}")
        if self.build is None:  # check every variant's config now, not after hours of earlier jobs
            entry = method_entry(self.method)
            for variant in self.variants:
                try:
                    entry.config().replace(**{**self.changes, **variant.changes})
                except (TypeError, ValueError) as exc:
                    fields = ", ".join(entry.config.__dataclass_fields__)
                    raise ValueError(f"{self.method} variant {variant.name or '(as configured)'!r}: {exc} "
                                     f"({entry.config.__name__} fields: {fields})") from None

    @property
    def trains_on_auxiliary(self) -> bool:
        return "auxiliary" in method_entry(self.method).fits_on

    def jobs(self) -> list[Job]:
        """Everything the experiment will run, in order, without reading any data."""
        protocol = self.protocol
        if isinstance(protocol, FewShotProtocol):
            return [Job(v, dataset=d, shots=k) for v in self.variants for d in protocol.datasets for k in protocol.shots]
        pairs = protocol.pairs if self.trains_on_auxiliary else (ZeroShotPair((), tuple(protocol.test_datasets)),)
        return [Job(v, seed=s, pair=p) for v in self.variants for s in protocol.seeds for p in pairs]

    def detector(self, variant: Variant, dataset: str | None = None, seed: int | None = None,
                 device: str | None = None) -> Detector:
        """A fresh detector for one job: ``build``'s, or the registry's with the experiment's and
        the variant's changes, the job's seed and the run's device (where the config has them)."""
        if self.build is not None:
            return self.build(variant, dataset)
        fields = method_entry(self.method).config.__dataclass_fields__
        defaults = {name: value for name, value in (("seed", seed), ("device", device))
                    if value is not None and name in fields}
        return create_detector(self.method, **{**defaults, **self.changes, **variant.changes})


@dataclass
class ExperimentResult:
    experiment: Experiment
    records: list[RunRecord] = field(default_factory=list)
    reused: int = 0
    trainings: int = 0
    detectors: dict[tuple, Detector] = field(default_factory=dict)  # (variant, train_data or dataset) -> detector

    def frame(self) -> pd.DataFrame:
        """records_frame(records) with each variant's ``label``."""
        labels = {v.name: v.label for v in self.experiment.variants}
        frame = records_frame(self.records)
        return frame.assign(label=frame["variant"].map(labels).fillna(""))


@dataclass
class _AuxiliaryModel:
    """A few-shot detector that first trains on auxiliary data: trained at most once, when needed."""

    detector: Detector
    datasets: list[AnomalyDataset]
    seed: int  # FitData.seed of the auxiliary training (recorded in each run's identity)
    result: "ExperimentResult"
    trained: bool = False

    def fit(self) -> None:
        if not self.trained:
            self.detector.fit(FitData(auxiliary=self.datasets, seed=self.seed))
            self.trained = True
            self.result.trainings += 1


def run_experiment(experiment: Experiment, data: DataSource, *, results_dir: Path, resume: bool = False,
                   device: str = "cpu", batch_size: int = 8, aupro_variant: str = "mvtec",
                   keep_detectors: bool = False, precision: str = "fp32") -> ExperimentResult:
    """Run every job of ``experiment`` (records written atomically, reused on ``resume``).

    With ``keep_detectors`` the fitted detectors are returned too, so a zero-shot model is trained
    even when all its records are reused (figures must come from a trained model). A few-shot
    detector trained on auxiliary data is one object for all shot counts of its dataset: each
    kept entry holds its last fit.
    """
    result = ExperimentResult(experiment)
    protocol = experiment.protocol
    auxiliary_models: dict[tuple[str, str], _AuxiliaryModel] = {}
    for job in tqdm(experiment.jobs(), desc=f"{experiment.method} grid", leave=False):
        variant = job.variant
        if job.pair is not None:
            detector = experiment.detector(variant, seed=job.seed, device=device)
            tests = [data.dataset(name) for name in job.pair.test]
            auxiliary = [data.dataset(name)[0] for name in job.pair.train]
            run = run_zero_shot(detector, tests=tests, auxiliary=auxiliary, results_dir=results_dir, seed=job.seed,
                                variant=variant.name, resume=resume, batch_size=batch_size,
                                aupro_variant=aupro_variant, device=device, always_fit=keep_detectors,
                                precision=precision)
            result.trainings += int(run.trained)
            key = (variant.name, job.pair.train_data, job.seed)
        else:
            train, root = data.dataset(job.dataset, "train", protocol.categories)
            test, _ = data.dataset(job.dataset, "test", protocol.categories)
            auxiliary_names = protocol.auxiliary_of(job.dataset) if experiment.trains_on_auxiliary else ()
            if auxiliary_names:  # one model per (variant, dataset), trained once, before its first computed run
                trained_key = (variant.name, job.dataset)
                if trained_key not in auxiliary_models:
                    auxiliary_models[trained_key] = _AuxiliaryModel(
                        experiment.detector(variant, job.dataset, device=device),
                        [data.dataset(name)[0] for name in auxiliary_names], protocol.seeds[0], result)
                model = auxiliary_models[trained_key]
                if keep_detectors:  # a kept detector must be trained even when every record is read back
                    model.fit()
                detector, auxiliary, prepare = model.detector, model.datasets, model.fit
            else:
                detector, auxiliary, prepare = experiment.detector(variant, job.dataset, device=device), (), None
            run = run_few_shot(detector, train=train, test=test, root=root, k=job.shots, seeds=protocol.seeds,
                               results_dir=results_dir, resume=resume, batch_size=batch_size,
                               aupro_variant=aupro_variant, device=device, variant=variant.name,
                               auxiliary=auxiliary, fit_auxiliary=prepare, auxiliary_seed=protocol.seeds[0],
                               precision=precision)
            key = (variant.name, job.dataset, job.shots)
        result.records += run.records
        result.reused += run.reused
        if keep_detectors:
            result.detectors[key] = detector
    return result
