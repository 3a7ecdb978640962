"""Run records: one JSON per evaluation, written atomically, reusable on resume.

A run is named by a :class:`RunSpec`: method, setting ("zero-shot", "4-shot"), variant (an
ablation's name, "" for the method as configured), dataset, category, seed — plus what else
determines its numbers: config, evaluation protocol, identity (dataset files, the k-shot list).
Its ``input_hash`` covers all of that and a fingerprint of the library's source code; resuming
reuses a stored record only when that hash is unchanged (:meth:`RunSpec.reusable`, the one
resume mechanism). Setting and variant are fields of the record; the tag ("4shot-<variant>")
is only the folder name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import paths
from ..data.kshot import FULL_SHOT
from ..io import atomic_write

TRACKED_PACKAGES = ("clipad", "torch", "torchvision", "open_clip_torch", "timm", "numpy", "scipy",
                    "scikit-learn", "pillow")


@dataclass
class RunRecord:
    method: str
    dataset: str
    category: str
    seed: int
    metrics: dict[str, float | None]
    config: dict
    protocol: dict
    input_hash: str
    setting: str = ""
    variant: str = ""
    train_data: str = ""
    timings: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    code_fingerprint: str = ""
    git_commit: str | None = None
    packages: dict = field(default_factory=dict)
    device: str = ""
    created: str = ""
    # Per test image, as columns of equal length: "image"/"mask" (paths relative to the dataset
    # root; mask None without one), "defect", "label", "score". The run browser ranks false
    # positives and negatives from it; empty in records written before it existed.
    samples: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return run_tag(self.setting, self.variant, self.train_data)

    @property
    def run_name(self) -> str:
        return f"{self.method}-{self.tag}" if self.tag else self.method


ZERO_SHOT = "zero-shot"


def few_shot_setting(k: int | str) -> str:
    """The setting of a k-shot run, as the papers' tables write it: ``"4-shot"``; ``"full"`` (every
    normal training image) -> ``"full-shot"``."""
    return f"{FULL_SHOT}-shot" if k == FULL_SHOT else f"{int(k)}-shot"


def run_tag(setting: str, variant: str = "", train_data: str = "") -> str:
    """The folder name of a run's records: ``"4-shot"`` -> ``"4shot"``, a variant appended
    (``"4shot-losses-both"``); ``"zero-shot"`` stays as it is. Only paths use it."""
    shots = setting.removesuffix("-shot")
    tag = f"{shots}shot" if shots.isdigit() or shots == FULL_SHOT else setting
    trained = f"on-{train_data}" if train_data else ""
    return "-".join(part for part in (tag, variant, trained) if part)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(_jsonable(value), sort_keys=True).encode()).hexdigest()


_CODE_FINGERPRINT: str | None = None


def code_fingerprint() -> str:
    """SHA-256 over the library's Python sources and bundled configs (cached per process)."""
    global _CODE_FINGERPRINT
    if _CODE_FINGERPRINT is None:
        digest = hashlib.sha256()
        package = Path(__file__).resolve().parents[1]
        for source in sorted(list(package.rglob("*.py")) + list(package.rglob("*.json"))):
            digest.update(str(source.relative_to(package)).encode())
            digest.update(source.read_bytes())
        _CODE_FINGERPRINT = digest.hexdigest()
    return _CODE_FINGERPRINT


def git_commit() -> str | None:
    """HEAD of the repository, with ``-dirty`` when the work tree has changes; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def device_description(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def dataset_fingerprint(records: Iterable, root: Path | None = None) -> str:
    """Hash of the dataset's files as (relative path, size): cheap, and changes when files do."""
    entries = []
    for record in records:
        for path in (record.image_path, record.mask_path):
            if path is None:
                continue
            shown = path.relative_to(root) if root is not None else path
            entries.append((str(shown), path.stat().st_size if path.exists() else -1))
    return stable_hash(entries)


def record_path(results_dir: Path, method: str, tag: str, dataset: str, category: str, seed: int) -> Path:
    run_name = f"{method}-{tag}" if tag else method
    return Path(results_dir) / "records" / run_name / dataset / category / f"seed{seed}.json"


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON atomically (see :func:`clipad_lib.io.atomic_write`)."""
    return atomic_write(path, json.dumps(_jsonable(payload), indent=2, sort_keys=True))


def write_record(record: RunRecord, results_dir: Path) -> Path:
    path = record_path(results_dir, record.method, record.tag, record.dataset, record.category, record.seed)
    return write_json_atomic(path, dataclasses.asdict(record))


def read_record(path: Path) -> RunRecord:
    raw = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(RunRecord)}
    return RunRecord(**{k: v for k, v in raw.items() if k in names})


def load_records(results_dir: Path, method: str | None = None, dataset: str | None = None) -> list[RunRecord]:
    """Every record under ``results_dir/records``, optionally filtered, sorted by run."""
    records = [read_record(p) for p in sorted((Path(results_dir) / "records").rglob("seed*.json"))]
    return [r for r in records if (method is None or r.method == method) and (dataset is None or r.dataset == dataset)]


@dataclass
class RunOutcome:
    metrics: dict[str, float | None]
    timings: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)  # see RunRecord.samples


SAMPLE_COLUMNS = ("image", "mask", "defect", "label", "score")


def sample_columns(records: Iterable, scores, root: Path | None = None) -> dict[str, list]:
    """:attr:`RunRecord.samples` of one evaluation: its dataset records (``SampleRecord``) and
    image scores [N] in the same order; paths are written relative to ``root`` when given."""
    records = list(records)
    scores = [float(s) for s in scores]
    if len(scores) != len(records):
        raise ValueError(f"got {len(scores)} scores for {len(records)} samples")

    def shown(path):
        if path is None:
            return None
        return str(Path(path).relative_to(root)) if root is not None else str(path)

    return {"image": [shown(r.image_path) for r in records], "mask": [shown(r.mask_path) for r in records],
            "defect": [r.defect for r in records], "label": [int(r.label) for r in records], "score": scores}


@dataclass(frozen=True)
class RunSpec:
    """Everything that names one run and determines its numbers (see the module docstring)."""

    method: str
    setting: str
    dataset: str
    category: str
    seed: int
    config: Any
    protocol: dict
    identity: dict = field(default_factory=dict)
    variant: str = ""
    train_data: str = ""  # the auxiliary data a run trained on ("mvtec+clinicdb"), "" for none

    @property
    def tag(self) -> str:
        return run_tag(self.setting, self.variant, self.train_data)

    @property
    def input_hash(self) -> str:
        """The hash of everything that determines the run's numbers, code included."""
        return stable_hash({"method": self.method, "setting": self.setting, "variant": self.variant,
                            "train_data": self.train_data,
                            "config": _jsonable(self.config), "dataset": self.dataset, "category": self.category,
                            "seed": self.seed, "protocol": self.protocol, "identity": _jsonable(self.identity),
                            "code": code_fingerprint()})

    def path(self, results_dir: Path) -> Path:
        return record_path(results_dir, self.method, self.tag, self.dataset, self.category, self.seed)

    def reusable(self, results_dir: Path) -> RunRecord | None:
        """The stored record of this run if its inputs and code are unchanged, else None."""
        path = self.path(results_dir)
        if path.is_file():
            existing = read_record(path)
            if existing.input_hash == self.input_hash:
                return existing
        return None

    def write(self, results_dir: Path, outcome: RunOutcome, device: str = "cpu") -> RunRecord:
        """Write the record of a finished run (atomically) and return it."""
        record = RunRecord(
            method=self.method, dataset=self.dataset, category=self.category, seed=self.seed,
            metrics=_jsonable(outcome.metrics), config=_jsonable(self.config), protocol=_jsonable(self.protocol),
            input_hash=self.input_hash, setting=self.setting, variant=self.variant, train_data=self.train_data,
            timings=_jsonable(outcome.timings), identity=_jsonable(self.identity), code_fingerprint=code_fingerprint(),
            git_commit=git_commit(), packages=package_versions(), device=device_description(device),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), samples=_jsonable(outcome.samples),
        )
        write_record(record, results_dir)
        return record


def run_recorded(spec: RunSpec, run: Callable[[], RunOutcome], *, results_dir: Path, device: str = "cpu",
                 resume: bool = False) -> tuple[RunRecord, bool]:
    """Run ``run`` and write its record, or, with ``resume``, reuse the stored record of ``spec``.

    Returns (record, reused). A run that raises writes nothing.
    """
    if resume:
        existing = spec.reusable(results_dir)
        if existing is not None:
            return existing, True
    return spec.write(results_dir, run(), device), False
