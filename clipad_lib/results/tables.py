"""Tables rendered from run records (CSV + Markdown), and paper-vs-ours comparisons.

Our metrics are stored in [0, 1]; tables show them in percent, as the papers print them.
Reported numbers follow one schema (``clipad_lib.papers``; ``value`` as printed, in percent).
Domain rows (the papers' "Average" and "Rank" over a domain's datasets) are computed here from
dataset-level numbers, the way the papers compute them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import atomic_write
from ..metrics.suite import IMAGE_METRICS, PIXEL_METRICS
from .records import RunRecord

ALL_METRICS = IMAGE_METRICS + PIXEL_METRICS
MEAN_ROW, RANK_ROW = "mean", "rank"


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """Long format: one row per (run, dataset, category, seed, metric) with value in [0, 1];
    ``setting`` ("zero-shot", "4-shot") and ``variant`` ("" or an ablation's name) come from the records."""
    columns = ["run", "method", "setting", "variant", "dataset", "category", "seed", "metric", "value"]
    rows = [
        {"run": r.run_name, "method": r.method, "setting": r.setting, "variant": r.variant, "dataset": r.dataset,
         "category": r.category, "seed": r.seed, "metric": metric, "value": value}
        for r in records
        for metric, value in r.metrics.items()
        if value is not None
    ]
    return pd.DataFrame(rows, columns=columns)


def with_category_mean(long: pd.DataFrame) -> pd.DataFrame:
    """Add a ``mean`` category per (run, dataset, seed, metric, and any other key column such as
    ``setting``): the average over categories that papers print as their "Average" row."""
    return pd.concat([long, dataset_means(long)], ignore_index=True)


def summary_table(records: Iterable[RunRecord], metrics: Sequence[str] = ALL_METRICS,
                  add_mean_row: bool = True) -> pd.DataFrame:
    """Per (run, dataset, category): mean and std over seeds of each metric, in percent.

    Columns: run, dataset, category, seeds, then ``<metric>`` and ``<metric>_std`` pairs. With
    ``add_mean_row`` a ``mean`` category per (run, dataset) averages the categories per seed
    first, then summarizes over seeds (how the papers report dataset averages).
    """
    long = records_frame(records)
    long = long[long["metric"].isin(metrics)]
    if long.empty:
        return pd.DataFrame(columns=["run", "dataset", "category", "seeds"])
    if add_mean_row:
        long = with_category_mean(long)
    grouped = long.groupby(["run", "dataset", "category", "metric"])["value"]
    stats = grouped.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, n="count")
    wide = stats["mean"].unstack("metric") * 100
    std = stats["std"].unstack("metric").add_suffix("_std") * 100
    seeds = stats["n"].groupby(["run", "dataset", "category"]).max().rename("seeds")
    ordered = [m for m in metrics if m in wide.columns]
    table = pd.concat([seeds, wide[ordered], std[[f"{m}_std" for m in ordered]]], axis=1).reset_index()
    table["_is_mean"] = table["category"] == MEAN_ROW
    table = table.sort_values(["run", "dataset", "_is_mean", "category"]).drop(columns="_is_mean")
    return table.reset_index(drop=True)


def format_mean_std(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Collapse ``m`` / ``m_std`` column pairs into '91.2 ± 0.4' strings for display."""
    shown = table.copy()
    for column in [c for c in table.columns if f"{c}_std" in table.columns]:
        shown[column] = [
            "–" if pd.isna(m) else (f"{m:.{digits}f}" if n <= 1 else f"{m:.{digits}f} ± {s:.{digits}f}")
            for m, s, n in zip(table[column], table[f"{column}_std"], table.get("seeds", [1] * len(table)))
        ]
        shown = shown.drop(columns=f"{column}_std")
    return shown


def write_table(table: pd.DataFrame, path_stem: str | Path, display: pd.DataFrame | None = None,
                digits: int = 1) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (numbers) and ``<stem>.md`` (formatted), each atomically.

    Both texts are rendered before either file is touched, so a failure leaves no half table.
    """
    stem = Path(path_stem)
    csv_text = table.to_csv(index=False, float_format="%.4f")
    display = display if display is not None else format_mean_std(table, digits)
    markdown_text = display.to_markdown(index=False, floatfmt=f".{digits}f") + "\n"
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write(csv_path, csv_text)
    atomic_write(md_path, markdown_text)
    return csv_path, md_path


def load_reported(paper_or_path: str | Path) -> pd.DataFrame:
    """The validated reported numbers of a paper (``"adaclip"``) or CSV file (see
    :func:`clipad_lib.papers.load_reported`)."""
    from ..papers import load_reported as load

    return load(paper_or_path)


REPORTED_LABELS = ("table", "train_data", "backbone", "quoted_from", "source_line")


def not_rerun_status(method: str, comparable: bool, reasons: Mapping[str, str] | None = None) -> str:
    """The status of a reported number with no *ours* beside it, with the reason in one line:
    ``reasons[method]`` (the notebook's), the reported-only method's, or the generic one."""
    from ..papers import not_rerun_reason

    reason = (reasons or {}).get(method) or not_rerun_reason(method)
    if reason is None:  # a registered method without this cell
        reason = ("the smoke stand-ins have no such dataset, category or setting" if not comparable else
                  "not in this notebook's grid (see its parameters)")
    return f"reported, not re-run: {reason}"


def paper_vs_ours(ours: pd.DataFrame, reported: pd.DataFrame,
                  on: Sequence[str] = ("method", "variant", "dataset", "category", "setting", "metric"),
                  digits: int = 1, comparable: bool = True, reasons: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Put reported numbers beside ours: ``paper | ours | Δ`` (percent; Δ = ours − paper).

    Args:
        ours: a long frame as from :func:`records_frame` (values in [0, 1]; ``rank`` rows as
            ranks); seeds are averaged.
        reported: rows of :func:`load_reported` (values in percent).
        on: the keys that identify one number in both.
        comparable: False when ours ran on stand-in data (the smoke profile): Δ stays empty.
        reasons: per method, why the rows it left empty were not run (shown in ``status``); it
            applies to every empty row of that method in ``reported``.
    Rows the paper reports but we did not run keep ``ours`` empty ("reported, not re-run: <why>",
    :func:`not_rerun_status`);
    rows whose value the paper leaves as ``-`` read "not reported".
    """
    keys = list(on)
    our_means = ours.groupby(keys, as_index=False, dropna=False)["value"].mean()
    is_rank = our_means["category"] == RANK_ROW if "category" in keys else False
    our_means["ours"] = np.where(is_rank, our_means["value"], our_means["value"] * 100)
    paper = reported.drop(columns=["paper"], errors="ignore").rename(columns={"value": "paper"})
    merged = paper.merge(our_means[keys + ["ours"]], on=keys, how="left")
    merged["Δ"] = (merged["ours"] - merged["paper"]) if comparable else np.nan
    merged["status"] = np.select(
        [merged["paper"].isna(), merged["ours"].isna(), np.full(len(merged), not comparable)],
        ["not reported", "reported, not re-run", "re-run on a smoke stand-in (not comparable)"], "re-run")
    if "method" in merged:
        merged["status"] = [not_rerun_status(method, comparable, reasons) if status == "reported, not re-run" else status
                            for method, status in zip(merged["method"], merged["status"])]
    if "category" in keys and "method" in keys and (merged["category"] == RANK_ROW).any():
        # A rank depends on who else is ranked: compare only where the same methods were ranked.
        group = [k for k in keys if k not in ("method",)]
        ours_ranked = our_means[our_means["category"] == RANK_ROW].groupby(group)["method"].agg(frozenset)
        paper_ranked = merged[merged["category"] == RANK_ROW].groupby(group)["method"].agg(frozenset)
        for index in merged.index[(merged["category"] == RANK_ROW) & merged["ours"].notna()]:
            where = tuple(merged.loc[index, group])
            ours_set, paper_set = ours_ranked.get(where, frozenset()), paper_ranked.get(where, frozenset())
            if ours_set != paper_set:
                merged.loc[index, "Δ"] = np.nan
                merged.loc[index, "status"] = (f"ranked among {len(ours_set)} re-run methods, the paper among "
                                               f"{len(paper_set)} (not comparable)")
    for column in ("paper", "ours", "Δ"):
        merged[column] = merged[column].astype(float).round(digits)
    extra = [c for c in ("table",) if c in merged.columns and c not in keys]
    labels = [c for c in REPORTED_LABELS if c in merged.columns and c not in keys + extra]
    return merged[extra + keys + ["paper", "ours", "Δ", "status"] + labels].reset_index(drop=True)


def dataset_means(long: pd.DataFrame) -> pd.DataFrame:
    """Per (every key column, seed): the dataset-level number — the mean over categories."""
    keys = [c for c in long.columns if c not in ("category", "value")]
    means = long[long["category"] != MEAN_ROW].groupby(keys, as_index=False, dropna=False)["value"].mean()
    return means.assign(category=MEAN_ROW)[long.columns]


def domain_rank(per_dataset: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The papers' "Rank" row: per (``by``, dataset) rank the methods by ``value`` (1 = best, tied
    values share the mean of their ranks), then average each method's rank over the datasets.

    per_dataset: one row per (``by``, dataset, method) with ``value`` (any scale; seeds averaged
    first by the caller). Returns ``by`` + [method, rank].
    """
    frame = per_dataset.copy()
    frame["rank"] = frame.groupby(list(by) + ["dataset"])["value"].rank(ascending=False, method="average")
    return frame.groupby(list(by) + ["method"], as_index=False)["rank"].mean()


def domain_rows(long: pd.DataFrame, domain_of: dict[str, str], rank: bool = True,
                with_datasets: bool = False) -> pd.DataFrame:
    """The domain rows the AdaCLIP tables print, from a long frame of per-category (or
    dataset-level) numbers: ``dataset`` = the domain, ``category`` = ``mean`` (the mean over the
    domain's datasets of each dataset's category mean, per seed) or ``rank`` (see
    :func:`domain_rank`; computed among the methods present, on seed means). A metric enters a
    domain only from the datasets that have it. ``with_datasets`` puts the dataset-level rows
    (:func:`dataset_means`) before them, as the tables print both.
    """
    dataset_level = dataset_means(long) if (long["category"] != MEAN_ROW).any() else long
    per_dataset = dataset_level[dataset_level["dataset"].isin(list(domain_of))].copy()
    per_dataset["domain"] = per_dataset["dataset"].map(domain_of)
    keys = [c for c in per_dataset.columns if c not in ("dataset", "category", "value", "domain", "seed", "run")]
    means = per_dataset.groupby(keys + ["domain", "seed"], as_index=False, dropna=False)["value"].mean()
    rows = [means.rename(columns={"domain": "dataset"}).assign(category=MEAN_ROW)]
    if rank:
        seed_means = per_dataset.groupby(keys + ["domain", "dataset"], as_index=False, dropna=False)["value"].mean()
        others = [k for k in keys if k != "method"]
        ranks = domain_rank(seed_means, by=others + ["domain"]).rename(columns={"rank": "value", "domain": "dataset"})
        rows.append(ranks.assign(category=RANK_ROW, seed=0))
    columns = [c for c in long.columns if c != "run"]
    domains = pd.concat(rows, ignore_index=True)[columns]
    return pd.concat([dataset_level, domains], ignore_index=True) if with_datasets else domains


def name_variants(long: pd.DataFrame, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """A copy of ``long`` whose rows with a variant show the method as ``"<method> (<label>)"``
    (``labels`` maps a variant to its label; the variant's own name where it has none), for
    displays that put the variant into the method's name. The ``variant`` column stays as it is;
    reported numbers join on it, not on this name."""
    labels = labels or {}
    named = long.copy()
    named["method"] = [m if not v else f"{m} ({labels.get(v, v)})" for m, v in zip(long["method"], long["variant"])]
    return named


def wide_table(long: pd.DataFrame, index: Sequence[str], columns: str = "category", digits: int = 1) -> pd.DataFrame:
    """The papers' layout: one row per ``index`` tuple, one column per ``columns`` value, each cell
    "mean ± std" over seeds in percent (a ``mean`` column averages the categories per seed first)."""
    per_seed = with_category_mean(long)
    stats = per_seed.groupby(list(index) + [columns])["value"].agg(["mean", "std", "count"]).reset_index()
    stats["cell"] = [f"{100 * m:.{digits}f}" if n <= 1 else f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}"
                     for m, s, n in zip(stats["mean"], stats["std"], stats["count"])]
    wide = stats.pivot(index=list(index), columns=columns, values="cell")
    ordered = [c for c in wide.columns if c != MEAN_ROW] + ([MEAN_ROW] if MEAN_ROW in wide.columns else [])
    return wide[ordered].reset_index()
