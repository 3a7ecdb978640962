"""Readers for the three on-disk layouts the papers' datasets come in.

* ``mvtec``: ``<category>/train/<normal_dir>/*``, ``<category>/test/<defect>/*`` and
  ``<category>/ground_truth/<defect>/<stem><mask_suffix>.<ext>`` (MVTec AD, MPDD, BTAD, the
  synthetic dataset).
* ``visa_csv``: VisA's split file (``split_csv/1cls.csv``: object, split, label, image, mask).
* ``meta_json``: the ``meta.json`` written by the APRIL-GAN / AnomalyCLIP / AdaCLIP data
  scripts: ``{"train"|"test": {class: [{img_path, mask_path, cls_name, specie_name, anomaly}]}}``.

Each returns :class:`SampleRecord` lists sorted by path; nothing is decoded here.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

from .sample import ANOMALOUS, IMAGE_SUFFIXES, NORMAL, DatasetError, SampleRecord

SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(mask_dir: Path, stem: str, mask_suffix: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = mask_dir / f"{stem}{mask_suffix}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def mvtec_categories(root: Path) -> list[str]:
    """Category folders of an MVTec-style root: those holding a ``test`` folder."""
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def read_mvtec(
    root: Path,
    split: str,
    categories: Iterable[str] | None = None,
    normal_dir: str = "good",
    mask_suffix: str = "_mask",
) -> list[SampleRecord]:
    """Read an MVTec-style folder tree.

    Args:
        root: dataset root holding one folder per category.
        split: ``"train"`` (normal images only) or ``"test"``.
        categories: which categories to read (all by default).
        normal_dir: name of the folder of normal images (``good``; BTAD uses ``ok``).
        mask_suffix: appended to an image's stem to name its mask (``_mask``; BTAD uses none).
    """
    _check_split(split)
    root = Path(root)
    records: list[SampleRecord] = []
    for category in categories if categories is not None else mvtec_categories(root):
        split_dir = root / category / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir} is missing: expected <root>/<category>/{split}/ in an MVTec-style layout")
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            is_normal = defect == normal_dir
            for image_path in _image_files(defect_dir):
                mask_path = None
                if not is_normal:
                    mask_path = _find_mask(root / category / "ground_truth" / defect, image_path.stem, mask_suffix)
                records.append(
                    SampleRecord(
                        image_path=image_path,
                        mask_path=mask_path,
                        label=NORMAL if is_normal else ANOMALOUS,
                        category=category,
                        defect="good" if is_normal else defect,
                        split=split,
                    )
                )
    return sorted(records, key=lambda r: (r.category, str(r.image_path)))


def read_visa_csv(
    root: Path, split: str, categories: Iterable[str] | None = None, split_file: str = "split_csv/1cls.csv"
) -> list[SampleRecord]:
    """Read VisA through its split CSV (columns: object, split, label, image, mask)."""
    _check_split(split)
    root = Path(root)
    csv_path = root / split_file
    if not csv_path.is_file():
        raise DatasetError(f"VisA split file {csv_path} is missing; VisA ships it as {split_file}")
    wanted = set(categories) if categories is not None else None
    records = []
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{csv_path} lacks the columns {sorted(missing)}")
        for row in reader:
            if row["split"] != split or (wanted is not None and row["object"] not in wanted):
                continue
            anomalous = row["label"].strip().lower() == "anomaly"
            mask = row["mask"].strip()
            records.append(
                SampleRecord(
                    image_path=root / row["image"],
                    mask_path=root / mask if anomalous and mask else None,
                    label=ANOMALOUS if anomalous else NORMAL,
                    category=row["object"],
                    defect="anomaly" if anomalous else "good",
                    split=split,
                )
            )
    return sorted(records, key=lambda r: (r.category, str(r.image_path)))


def read_meta_json(
    root: Path, split: str, categories: Iterable[str] | None = None, meta_file: str = "meta.json"
) -> list[SampleRecord]:
    """Read a dataset described by an APRIL-GAN/AdaCLIP-style ``meta.json``."""
    _check_split(split)
    root = Path(root)
    meta_path = root / meta_file
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path} is missing; build it with the dataset's preparation script")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from None
    if split not in meta:
        raise DatasetError(f"{meta_path} has no {split!r} section (found {sorted(meta)})")
    wanted = set(categories) if categories is not None else None
    records = []
    for category, entries in meta[split].items():
        if wanted is not None and category not in wanted:
            continue
        for entry in entries:
            try:
                anomalous = int(entry["anomaly"]) == 1
                mask = entry.get("mask_path") or ""
                records.append(
                    SampleRecord(
                        image_path=root / entry["img_path"],
                        mask_path=root / mask if anomalous and mask else None,
                        label=ANOMALOUS if anomalous else NORMAL,
                        category=entry.get("cls_name", category),
                        defect=entry.get("specie_name") or ("anomaly" if anomalous else "good"),
                        split=split,
                    )
                )
            except KeyError as exc:
                raise DatasetError(f"{meta_path}: an entry of {category!r} lacks the field {exc}: {entry}") from None
    return sorted(records, key=lambda r: (r.category, str(r.image_path)))


READERS = {"mvtec": read_mvtec, "visa_csv": read_visa_csv, "meta_json": read_meta_json}
