"""Dataset manifests (``data_manifests/<name>.yaml``) and checking a real copy against one."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from .. import paths
from .readers import READERS, mvtec_categories
from .sample import ANOMALOUS, IMAGE_SUFFIXES, NORMAL, AnomalyDataset, DatasetError, load_sample

LABEL_LEVELS = ("image", "pixel")


@dataclass(frozen=True)
class Counts:
    """Number of normal and anomalous test images."""

    normal: int
    anomalous: int


@dataclass(frozen=True)
class Manifest:
    """What a dataset is, where it comes from, how it is laid out and what its test split holds.

    ``categories`` maps each category to its expected test counts, or None where the papers
    give only the dataset total (``test_counts``).
    """

    name: str
    title: str
    homepage: str
    license: str
    citation: str
    download_hint: str
    domain: str
    modality: str
    label_levels: tuple[str, ...]
    layout: dict
    default_dirname: str
    counts_source: str
    test_counts: Counts | None
    categories: dict[str, Counts | None]
    has_train_split: bool = True
    notes: str = ""
    path: Path | None = None

    @property
    def has_pixel_labels(self) -> bool:
        return "pixel" in self.label_levels

    @property
    def has_image_labels(self) -> bool:
        return "image" in self.label_levels

    def reader_options(self) -> dict:
        return {k: v for k, v in self.layout.items() if k != "format"}

    def resolve_root(self, root: str | Path | None = None) -> Path:
        """The dataset folder: ``root`` if given, else ``$CLIPAD_DATA/<default_dirname>``."""
        if root is None:
            base = paths.data_root()
            if base is None:
                raise DatasetError(
                    f"no root given for dataset {self.name!r} and CLIPAD_DATA is unset. "
                    f"Set CLIPAD_DATA to the folder holding {self.default_dirname}/ or pass root=. "
                    f"Download: {self.download_hint} (manifest: {self.path})"
                )
            root = base / self.default_dirname
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"dataset {self.name!r} not found at {root}. Download: {self.download_hint} "
                f"(manifest: {self.path})"
            )
        return root


def _counts(value, where: str) -> Counts | None:
    if value is None:
        return None
    try:
        return Counts(normal=int(value["normal"]), anomalous=int(value["anomalous"]))
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: counts must be {{normal: int, anomalous: int}}, got {value!r}") from None


def load_manifest(name_or_path: str | Path) -> Manifest:
    """Load a manifest by dataset name (from :func:`paths.manifests_dir`) or by file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = paths.manifests_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(list_manifests())
        raise DatasetError(f"no manifest for dataset {str(name_or_path)!r} at {path}; known datasets: {known}")
    raw = yaml.safe_load(path.read_text())
    required = ("name", "title", "homepage", "license", "citation", "download_hint", "domain", "modality",
                "label_levels", "layout", "default_dirname", "counts_source", "categories")
    missing = [key for key in required if key not in raw]
    if missing:
        raise DatasetError(f"manifest {path} lacks the fields {missing}")
    levels = tuple(raw["label_levels"])
    if not levels or any(level not in LABEL_LEVELS for level in levels):
        raise DatasetError(f"manifest {path}: label_levels must be a subset of {LABEL_LEVELS}, got {levels}")
    if raw["layout"].get("format") not in READERS:
        raise DatasetError(f"manifest {path}: layout.format must be one of {sorted(READERS)}")
    categories = raw["categories"]
    if isinstance(categories, list):
        categories = {str(c): None for c in categories}
    return Manifest(
        name=raw["name"], title=raw["title"], homepage=raw["homepage"], license=raw["license"],
        citation=raw["citation"], download_hint=raw["download_hint"], domain=raw["domain"],
        modality=raw["modality"], label_levels=levels, layout=dict(raw["layout"]),
        default_dirname=raw["default_dirname"], counts_source=raw["counts_source"],
        test_counts=_counts(raw.get("test_counts"), f"{path}: test_counts"),
        categories={str(c): _counts(v, f"{path}: categories.{c}") for c, v in categories.items()},
        has_train_split=bool(raw.get("has_train_split", True)), notes=raw.get("notes", ""), path=path,
    )


def list_manifests() -> list[str]:
    return sorted(p.stem for p in paths.manifests_dir().glob("*.yaml"))


UNMASKED_CHOICES = ("refuse", "drop", "keep")


def read_split(manifest: Manifest, root: Path, split: str, categories=None, unmasked: str = "refuse") -> AnomalyDataset:
    """Read one split of a dataset whose root is known, with the reader its manifest names.

    ``unmasked``: what to do with anomalous images that have no mask in a dataset with pixel labels
    (their pixels would count as normal and skew every pixel metric): ``"refuse"`` (default) raises
    naming them, ``"drop"`` leaves them out with a warning and lists them in the dataset's
    ``dropped``, ``"keep"`` keeps them (``verify_dataset`` reports them itself).
    """
    if unmasked not in UNMASKED_CHOICES:
        raise ValueError(f"unmasked must be one of {UNMASKED_CHOICES}, got {unmasked!r}")
    if categories is not None:
        unknown = [c for c in categories if c not in manifest.categories]
        if unknown:
            raise DatasetError(
                f"unknown categories {unknown} for {manifest.name}; known: {', '.join(manifest.categories)}"
            )
    reader = READERS[manifest.layout["format"]]
    records = reader(root, split, categories if categories is not None else list(manifest.categories),
                     **manifest.reader_options())
    without_mask = [r for r in records if r.label == ANOMALOUS and r.mask_path is None] if manifest.has_pixel_labels else []
    if without_mask and unmasked == "refuse":
        shown = "\n  ".join(str(r.image_path) for r in without_mask[:10])
        more = f"\n  ... and {len(without_mask) - 10} more" if len(without_mask) > 10 else ""
        raise DatasetError(
            f"{len(without_mask)} anomalous image(s) of {manifest.name} ({split}) have no mask, so their pixels would "
            f"count as normal in every pixel metric:\n  {shown}{more}\nRestore the masks (see "
            f"`clipad data verify {manifest.name}`), or load with unmasked=\"drop\" to leave these images out "
            "(they are then listed in the dataset's `dropped`)."
        )
    if without_mask and unmasked == "drop":
        warnings.warn(f"{manifest.name} ({split}): leaving out {len(without_mask)} anomalous image(s) without a mask "
                      f"(dataset.dropped lists them)", RuntimeWarning, stacklevel=2)
        records = [r for r in records if not (r.label == ANOMALOUS and r.mask_path is None)]
    dataset = AnomalyDataset(manifest.name, records, manifest.has_pixel_labels)
    dataset.dropped = [r.image_path for r in without_mask] if unmasked == "drop" else []
    return dataset


@dataclass
class CategoryCheck:
    category: str
    expected: Counts | None
    found: Counts | None


@dataclass
class VerificationReport:
    """The outcome of checking a dataset copy against its manifest: every mismatch, in words."""

    dataset: str
    root: Path
    problems: list[str] = field(default_factory=list)
    categories: list[CategoryCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what is fine but worth saying (categories not selected)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"dataset {self.dataset} at {self.root}"]
        for check in self.categories:
            found = f"{check.found.normal} normal / {check.found.anomalous} anomalous" if check.found else "missing"
            expected = (f"{check.expected.normal} / {check.expected.anomalous}" if check.expected
                        else "not given by the papers")
            lines.append(f"  {check.category:<20} found {found:<34} expected {expected}")
        lines.extend(f"note: {note}" for note in self.notes)
        if self.ok:
            lines.append("OK: the copy matches its manifest")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {problem}" for problem in self.problems)
        return "\n".join(lines)


def _list_some(paths_: list, limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths_[:limit])
    return shown + (f" and {len(paths_) - limit} more" if len(paths_) > limit else "")


def verify_dataset(name_or_manifest: str | Manifest, root: str | Path | None = None,
                   deep: bool = False, categories: Sequence[str] | None = None) -> VerificationReport:
    """Check a dataset copy against its manifest.

    Reports missing categories, wrong test counts (per category and in total), anomalous images
    without a mask in pixel-level datasets, masks without an image, listed files that do not
    exist, and with ``deep=True`` images or masks that do not decode or whose sizes differ.

    ``categories`` checks only what a run of those categories reads: each must match the
    manifest exactly; the others may be absent (a partial copy), which a note says once.
    """
    manifest = name_or_manifest if isinstance(name_or_manifest, Manifest) else load_manifest(name_or_manifest)
    if categories is not None:
        unknown = sorted(set(categories) - set(manifest.categories))
        if unknown:
            raise DatasetError(f"{manifest.name} has no categories {unknown}; its categories: "
                               f"{', '.join(manifest.categories)} ({manifest.path})")
    try:
        root = manifest.resolve_root(root)
    except DatasetError as exc:
        report = VerificationReport(manifest.name, Path(root) if root else Path("?"))
        report.problems.append(str(exc))
        return report
    report = VerificationReport(manifest.name, root)
    fmt = manifest.layout["format"]
    present = set(manifest.categories)
    selected = set(categories) if categories is not None else set(manifest.categories)
    if fmt == "mvtec":
        on_disk = set(mvtec_categories(root))
        present = present & on_disk & selected
        for category in sorted(selected - on_disk):
            report.problems.append(f"category {category!r} is missing: expected the folder {root / category}/test")
        for category in sorted(on_disk - set(manifest.categories)):
            report.problems.append(f"folder {root / category} is not a category of the manifest")
        absent = [c for c in manifest.categories if c not in selected and c not in on_disk]
        if absent:
            report.notes.append(f"not on disk and not selected, so not checked: {', '.join(absent)}")
    else:
        present = present & selected
    try:
        test = (read_split(manifest, root, "test", sorted(present), unmasked="keep") if present
                else AnomalyDataset(manifest.name, []))
    except DatasetError as exc:
        report.problems.append(str(exc))
        return report

    total = Counts(0, 0)
    for category, expected in manifest.categories.items():
        if category not in selected:
            continue
        if category not in present:
            report.categories.append(CategoryCheck(category, expected, None))
            continue
        labels = [r.label for r in test.records if r.category == category]
        found = Counts(labels.count(NORMAL), labels.count(ANOMALOUS))
        total = Counts(total.normal + found.normal, total.anomalous + found.anomalous)
        report.categories.append(CategoryCheck(category, expected, found))
        if fmt != "mvtec" and not labels:
            report.problems.append(f"category {category!r} is missing: no test sample lists it")
        elif expected is not None and found != expected:
            report.problems.append(
                f"category {category!r}: found {found.normal} normal and {found.anomalous} anomalous test images, "
                f"expected {expected.normal} and {expected.anomalous} ({manifest.counts_source})"
            )
    if manifest.test_counts is not None and total != manifest.test_counts and not report.problems \
            and selected == set(manifest.categories):
        report.problems.append(
            f"test split holds {total.normal} normal and {total.anomalous} anomalous images, "
            f"expected {manifest.test_counts.normal} and {manifest.test_counts.anomalous} ({manifest.counts_source})"
        )

    missing_files = [r.image_path for r in test.records if not r.image_path.is_file()]
    missing_files += [r.mask_path for r in test.records if r.mask_path is not None and not r.mask_path.is_file()]
    if missing_files:
        report.problems.append(f"{len(missing_files)} listed file(s) do not exist: {_list_some(missing_files)}")
    if manifest.has_pixel_labels:
        unmasked = [r.image_path for r in test.records if r.label == ANOMALOUS and r.mask_path is None]
        if unmasked:
            report.problems.append(f"{len(unmasked)} anomalous image(s) have no mask: {_list_some(unmasked)}")
    if fmt == "mvtec":
        used_masks = {r.mask_path for r in test.records if r.mask_path is not None}
        orphans = sorted(
            mask
            for category in present
            if (root / category / "ground_truth").is_dir()
            for mask in (root / category / "ground_truth").rglob("*")
            if mask.suffix.lower() in IMAGE_SUFFIXES and mask not in used_masks
        )
        if orphans:
            report.problems.append(f"{len(orphans)} mask(s) have no image: {_list_some(orphans)}")
        if manifest.has_train_split:
            normal_dir = manifest.layout.get("normal_dir", "good")
            no_train = [c for c in sorted(present) if not (root / c / "train" / normal_dir).is_dir()]
            if no_train:
                report.problems.append(f"categories without train/{normal_dir}/: {', '.join(no_train)}")
    if deep:
        for record in test.records:
            try:
                load_sample(record)
            except DatasetError as exc:
                report.problems.append(str(exc))
    return report
