"""What each paper reported, as data: ``papers/<paper>/reported.csv``, one tidy schema for all.

Columns (:data:`REPORTED_COLUMNS`), one printed number per row:

* ``paper`` — a key of :data:`PAPERS`; ``table`` — ``main:<n>`` or ``supp:<n>`` (arabic numerals;
  :func:`table_label` prints it the paper's way, "Tab. III", "supp. Tab. 10");
* ``method`` — a method id: a registered method (:func:`clipad_lib.methods.list_methods`) or one
  of :data:`REPORTED_ONLY`; display names live with the ids (:func:`display_name`). Empty only on
  dataset-statistics rows;
* ``variant`` — the ablation variant ("" for the method as published), the same tag the
  notebooks give their run records, so a reported row and our record join on it;
* ``dataset`` — a manifest name, or a domain (``industrial`` / ``medical``) for domain rows;
  ``category`` — a manifest category, ``mean`` (dataset or domain average) or ``rank`` (the
  paper's average rank over the domain's datasets);
* ``setting`` (``zero-shot``, ``4-shot``, ``full-shot``), ``train_data`` (the auxiliary data,
  '+'-joined manifest names, or a named protocol such as ``adaclip-protocol``), ``backbone``,
  ``image_size`` — what the paper states for the row, empty where it states nothing;
* ``metric`` — :data:`METRICS`; ``value`` — as printed (percent), empty where the paper prints
  ``-`` (not reported); ``spread`` — the printed ± part; ``quoted_from`` — the source when the
  paper quotes another paper's number (†); ``source_line`` — the printed row / column labels.

Nothing here is computed: every value was transcribed from the paper's tables, and
``tests/test_reported.py`` checks every row against the vocabularies, that no key repeats, and
that printed averages and ranks recompute from their rows (the paper's own slips are listed in
``papers/<paper>/printing_slips.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

PAPERS_DIR = Path(__file__).parent

REPORTED_COLUMNS = ("paper", "table", "method", "variant", "dataset", "category", "setting", "train_data",
                    "backbone", "image_size", "metric", "value", "spread", "quoted_from", "source_line")
# The columns that identify one number (value, spread, quotes and labels describe it).
REPORTED_KEY = REPORTED_COLUMNS[:11]
SCORE_METRICS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "pixel_f1_max", "aupro")
METRICS = SCORE_METRICS + ("original_size_mb", "added_size_mb", "test_normal_images", "test_anomalous_images",
                           "num_categories")
DOMAINS = ("industrial", "medical")
MEAN_ROW, RANK_ROW = "mean", "rank"
TRAIN_PROTOCOLS = ("adaclip-protocol", "adaclip-protocol[medical]", "adaclip-protocol[industrial]",
                   "anomalyclip-protocol")


@dataclass(frozen=True)
class Paper:
    title: str
    citation: str
    roman_tables: bool = False  # the paper numbers its tables I, II, III

    def table_label(self, table: str) -> str:
        part, number = table.split(":", 1)
        shown = _roman(int(number)) if self.roman_tables and number.isdigit() else number
        return f"{'supp. ' if part == 'supp' else ''}Tab. {shown}"


def _roman(number: int) -> str:
    numerals = [(10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    text = ""
    for value, numeral in numerals:
        while number >= value:
            text, number = text + numeral, number - value
    return text


PAPERS = {
    "adaclip": Paper("AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection",
                     "Cao et al., ECCV 2024, arXiv:2407.15795"),
    "clip_fsac": Paper("CLIP-FSAC++: Few-Shot Anomaly Classification with Anomaly Descriptor Based on CLIP",
                       "Zuo et al., manuscript, November 2024", roman_tables=True),
}

class ReportedOnly(NamedTuple):
    """A method the papers print and this workbook does not re-run: how it is printed, what it is
    and where it appears, and in one line why it is not re-run (shown beside its numbers)."""

    display: str
    about: str
    why: str


FULL_SHOT_WHY = "a full-shot method with its own training recipe and no code in this workbook"
# Methods whose numbers the papers print and this workbook does not re-run: id -> ReportedOnly.
REPORTED_ONLY = {
    "saa": ReportedOnly("SAA", "Segment Any Anomaly without training (Cao et al., arXiv:2305.10724): Grounding DINO + "
                               "SAM with hand-made prompts — AdaCLIP Tab. 1-2, supp. Tab. 9-14",
                        "needs Grounding DINO and SAM weights and per-dataset hand-written prompts, not shipped here"),
    "cdo": ReportedOnly("CDO", "Collaborative Discrepancy Optimization (Cao et al., IEEE TII 2023), full-shot — "
                               "AdaCLIP supp. Tab. 8", FULL_SHOT_WHY),
    "clip_fsac_conference": ReportedOnly("CLIP-FSAC", "CLIP-FSAC, the conference version of CLIP-FSAC++ — "
                                                      "CLIP-FSAC++ Tab. I-III",
                                         "the paper does not describe how the conference version differs in "
                                         "enough detail to rebuild it"),
    "graphcore": ReportedOnly("GraphCore", "GraphCore (Xie et al., ICLR 2023) — CLIP-FSAC++ Tab. II-III",
                              "no public code; its graph-network feature extractor is not specified enough to rebuild"),
    "regad": ReportedOnly("RegAD", "RegAD (Huang et al., ECCV 2022) — CLIP-FSAC++ Tab. III",
                          "meta-trains a registration network on other categories for many epochs; not implemented"),
    "anomalygpt": ReportedOnly("AnomalyGPT", "AnomalyGPT (Gu et al., AAAI 2024) — CLIP-FSAC++ Tab. III",
                               "needs a Vicuna-7B language model and its fine-tuned weights"),
    "anople": ReportedOnly("AnoPLe", "AnoPLe, prompt learning for few-shot AD — CLIP-FSAC++ Tab. III",
                           "its recipe is not given in the paper that quotes it; not implemented"),
    "efficientad_s": ReportedOnly("EfficientAD-S", "EfficientAD-S (Batzner et al., WACV 2024), full-shot — "
                                                   "CLIP-FSAC++ Tab. IV", FULL_SHOT_WHY),
    "fair": ReportedOnly("FAIR", "FAIR, full-shot — CLIP-FSAC++ Tab. IV", FULL_SHOT_WHY),
    "edgrec": ReportedOnly("EdgRec", "EdgRec, full-shot — CLIP-FSAC++ Tab. IV", FULL_SHOT_WHY),
    "diffusionad": ReportedOnly("DiffusionAD", "DiffusionAD (Zhang et al., arXiv:2303.08730), full-shot — "
                                               "CLIP-FSAC++ Tab. IV", FULL_SHOT_WHY),
    "glass": ReportedOnly("GLASS", "GLASS, full-shot — CLIP-FSAC++ Tab. IV", FULL_SHOT_WHY),
    "cutpaste": ReportedOnly("CutPaste", "CutPaste (Li et al., CVPR 2021), full-shot — CLIP-FSAC++ Tab. IV",
                             FULL_SHOT_WHY),
    "mkd": ReportedOnly("MKD", "MKD (Salehi et al., CVPR 2021), full-shot — CLIP-FSAC++ Tab. IV", FULL_SHOT_WHY),
}


def not_rerun_reason(method: str) -> str | None:
    """Why a reported-only method is not re-run (None for a registered method)."""
    entry = REPORTED_ONLY.get(method)
    return entry.why if entry else None


def known_methods() -> dict[str, str]:
    """Every method id a reported row may name -> its display name (registered and reported-only)."""
    from ..methods import list_methods, method_entry

    names = {m: method_entry(m).display_name or m for m in list_methods()}
    overlap = set(names) & set(REPORTED_ONLY)
    if overlap:
        raise RuntimeError(f"methods {sorted(overlap)} are registered and also listed as reported-only; "
                           "remove them from REPORTED_ONLY")
    return {**names, **{m: entry.display for m, entry in REPORTED_ONLY.items()}}


def display_name(method: str) -> str:
    """How the papers print a method id ("clip_fsac" -> "CLIP-FSAC++")."""
    return known_methods().get(method, method)


def table_label(paper: str, table: str) -> str:
    return PAPERS[paper].table_label(table)


def available_papers() -> list[str]:
    return sorted(p.parent.name for p in PAPERS_DIR.glob("*/reported.csv"))


def reported_csv(paper: str) -> Path:
    """The reported-numbers CSV of a paper; an unknown paper lists the known ones."""
    path = PAPERS_DIR / paper / "reported.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no reported numbers for {paper!r}; available: {', '.join(available_papers()) or 'none yet'}")
    return path


def printing_slips(paper: str) -> list[dict]:
    """The paper's own arithmetic slips: printed averages that do not recompute from their rows."""
    path = PAPERS_DIR / paper / "printing_slips.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else []


class ReportedNumbersError(ValueError):
    """A reported-numbers file that does not follow the schema (the message names each bad row)."""


def _categories_by_dataset() -> dict[str, set[str]]:
    from ..data import list_manifests, load_manifest

    return {name: set(load_manifest(name).categories or ()) for name in list_manifests()}


def validate_reported(frame, source: str = "reported numbers"):
    """Check a reported-numbers frame against the schema and vocabularies; returns it with
    ``value`` / ``spread`` / ``image_size`` numeric (NaN where empty). Every problem is listed,
    with its CSV line, before anything fails."""
    import pandas as pd

    missing = [c for c in REPORTED_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportedNumbersError(f"{source} lacks the columns {missing}; expected {list(REPORTED_COLUMNS)}")
    methods, categories = known_methods(), _categories_by_dataset()
    problems = []

    def bad(index, text):
        problems.append(f"line {index + 2}: {text}")

    for index, row in frame.iterrows():
        if row["paper"] not in PAPERS:
            bad(index, f"unknown paper {row['paper']!r}; known: {sorted(PAPERS)}")
        part, _, number = str(row["table"]).partition(":")
        if part not in ("main", "supp") or not number.isdigit():
            bad(index, f"table {row['table']!r} must look like main:<n> or supp:<n>")
        if row["metric"] not in METRICS:
            bad(index, f"unknown metric {row['metric']!r}; known: {', '.join(METRICS)}")
        is_score = row["metric"] in SCORE_METRICS
        if row["method"] not in methods and (is_score or row["method"]):
            bad(index, f"method {row['method']!r} is neither registered nor in papers.REPORTED_ONLY")
        dataset, category = row["dataset"], row["category"]
        if dataset in DOMAINS:
            if category not in (MEAN_ROW, RANK_ROW):
                bad(index, f"a domain row ({dataset}) must have category 'mean' or 'rank', not {category!r}")
        elif dataset in categories:
            if category not in categories[dataset] | {MEAN_ROW}:
                bad(index, f"{category!r} is not a category of {dataset} (manifest: {sorted(categories[dataset])})")
        elif dataset or is_score:
            bad(index, f"dataset {dataset!r} is neither a manifest ({', '.join(sorted(categories))}) nor a domain")
        train = row["train_data"]
        if train and train not in TRAIN_PROTOCOLS and not set(train.split("+")) <= set(categories):
            bad(index, f"train_data {train!r} must be '+'-joined manifest names or one of {TRAIN_PROTOCOLS}")
        setting = row["setting"]
        if is_score and not (setting in ("zero-shot", "full-shot") or
                             (setting.endswith("-shot") and setting.removesuffix("-shot").isdigit())):
            bad(index, f"setting {setting!r} must be zero-shot, full-shot or <k>-shot")
    checked = frame.copy()
    for column in ("value", "spread", "image_size"):
        numbers = pd.to_numeric(checked[column].replace("", None), errors="coerce")
        for index in checked.index[numbers.isna() & (checked[column] != "")]:
            bad(index, f"{column} {checked.at[index, column]!r} is not a number")
        checked[column] = numbers
    duplicated = checked[checked.duplicated(list(REPORTED_KEY), keep=False)]
    for index in duplicated.index:
        bad(index, "this key appears more than once: " + ", ".join(f"{c}={checked.at[index, c]!r}" for c in REPORTED_KEY))
    if problems:
        shown = "\n  ".join(problems[:40]) + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else "")
        raise ReportedNumbersError(f"{source} does not follow the reported-numbers schema "
                                   f"(clipad_lib/papers/__init__.py):\n  {shown}")
    return checked


def load_reported(paper_or_path: str | Path):
    """The reported numbers of a paper (``"adaclip"``) or of a CSV file, validated."""
    import pandas as pd

    path = Path(paper_or_path)
    if not path.suffix:
        path = reported_csv(str(paper_or_path))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return validate_reported(frame, str(path))
