"""Run records: one JSON per evaluation, written atomically, reusable on resume.

A record's ``input_hash`` covers everything that determines its numbers: method, config,
dataset files (relative paths and sizes), category, seed, evaluation protocol, extra identity
(e.g. the k-shot list) and a fingerprint of the library's source code. ``--resume`` reuses a
record only when that hash is unchanged.
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
    tag: str = ""
    timings: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    code_fingerprint: str = ""
    git_commit: str | None = None
    packages: dict = field(default_factory=dict)
    device: str = ""
    created: str = ""

    @property
    def run_name(self) -> str:
        return f"{self.method}-{self.tag}" if self.tag else self.method


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


def run_input_hash(*, method: str, tag: str, config: Any, dataset: str, category: str, seed: int, protocol: dict,
                   identity: dict | None = None) -> str:
    """The hash of everything that determines a run's numbers, code included."""
    return stable_hash({"method": method, "tag": tag, "config": _jsonable(config), "dataset": dataset,
                        "category": category, "seed": seed, "protocol": protocol, "identity": _jsonable(identity or {}),
                        "code": code_fingerprint()})


def reusable_record(results_dir: Path, method: str, tag: str, dataset: str, category: str, seed: int,
                    input_hash: str) -> RunRecord | None:
    """The stored record of this run if its inputs and code are unchanged, else None."""
    path = record_path(results_dir, method, tag, dataset, category, seed)
    if path.is_file():
        existing = read_record(path)
        if existing.input_hash == input_hash:
            return existing
    return None


def run_recorded(*, results_dir: Path, method: str, config: Any, dataset: str, category: str, seed: int,
                 protocol: dict, run: Callable[[], RunOutcome], tag: str = "", identity: dict | None = None,
                 device: str = "cpu", resume: bool = False) -> tuple[RunRecord, bool]:
    """Run ``run`` and write its record, or reuse the existing record when resuming.

    Returns (record, reused). ``identity`` holds whatever else determines the numbers (dataset
    fingerprint, k-shot files); it is part of the input hash.
    """
    config_dict = _jsonable(config)
    identity = _jsonable(identity or {})
    input_hash = run_input_hash(method=method, tag=tag, config=config, dataset=dataset, category=category,
                                seed=seed, protocol=protocol, identity=identity)
    if resume:
        existing = reusable_record(results_dir, method, tag, dataset, category, seed, input_hash)
        if existing is not None:
            return existing, True
    outcome = run()
    record = RunRecord(
        method=method, dataset=dataset, category=category, seed=seed, metrics=_jsonable(outcome.metrics),
        config=config_dict, protocol=_jsonable(protocol), input_hash=input_hash, tag=tag,
        timings=_jsonable(outcome.timings), identity=identity, code_fingerprint=code_fingerprint(),
        git_commit=git_commit(), packages=package_versions(), device=device_description(device),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_record(record, results_dir)
    return record, False
