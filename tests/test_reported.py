"""The reported numbers of every paper: one schema, valid vocabularies, and the papers' own
arithmetic (averages and ranks) recomputed from their rows."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from clipad_lib.data import load_manifest
from clipad_lib.papers import (DOMAINS, MEAN_ROW, RANK_ROW, REPORTED_COLUMNS, ReportedNumbersError, available_papers,
                               display_name, load_reported, printing_slips, reported_csv, table_label,
                               validate_reported)
from clipad_lib.results import domain_rank

# Printed values carry one decimal: the mean of rounded rows may differ from the rounded mean
# by up to 0.05 + 0.05.
ROUNDING = 0.1 + 1e-9
KEY = ["paper", "table", "method", "variant", "setting", "backbone", "image_size", "metric"]


@pytest.fixture(scope="module", params=available_papers())
def reported(request):
    return load_reported(request.param)


def test_both_papers_are_transcribed():
    assert {"adaclip", "clip_fsac"} <= set(available_papers())
    adaclip = load_reported("adaclip")
    # Tab. 1-6 and supp. Tab. 1-3, 5-14: every table the issue lists, each with its rows.
    assert set(adaclip["table"]) == {f"main:{n}" for n in range(1, 7)} | {f"supp:{n}" for n in (1, 2, 3, *range(5, 15))}
    assert len(adaclip) > 2200
    assert set(load_reported("clip_fsac")["table"]) == {f"main:{n}" for n in range(1, 8)}


def test_header_is_the_schema(reported):
    assert tuple(reported.columns) == REPORTED_COLUMNS


def test_averages_recompute_from_their_categories(reported):
    """Each printed dataset average equals the mean of its printed categories (within rounding),
    except the paper's own slips listed in printing_slips.yaml."""
    paper = reported["paper"].iloc[0]
    slips = {(s["table"], s["method"], s.get("variant", ""), s["dataset"], s["setting"], s["metric"])
             for s in printing_slips(paper) if s.get("category", MEAN_ROW) == MEAN_ROW}
    rows = reported[~reported["dataset"].isin(DOMAINS) & reported["value"].notna()]
    checked, found = 0, []
    for key, group in rows.groupby(KEY + ["dataset", "train_data"], dropna=False):
        mean = group[group["category"] == MEAN_ROW]["value"]
        parts = group[group["category"] != MEAN_ROW]["value"]
        if len(mean) != 1 or len(parts) < 2:
            continue
        checked += 1
        if abs(parts.mean() - mean.iloc[0]) > ROUNDING:
            found.append((key[1], key[2], key[3], key[8], key[4], key[7]))
    assert checked >= 40
    assert set(found) == slips, f"averages that do not recompute: {sorted(set(found) - slips)}; " \
                                f"listed slips that do: {sorted(slips - set(found))}"


def test_domain_averages_recompute_from_their_datasets(reported):
    """AdaCLIP's domain 'Average' rows are the mean over the domain's datasets."""
    domain_of = {}
    rows = reported[reported["value"].notna()]
    datasets = rows[~rows["dataset"].isin(DOMAINS) & (rows["category"] == MEAN_ROW) & (rows["dataset"] != "")]
    for name in datasets["dataset"].unique():
        domain_of[name] = load_manifest(name).domain
    checked = 0
    for key, group in rows[rows["dataset"].isin(DOMAINS) & (rows["category"] == MEAN_ROW)].groupby(KEY + ["dataset"], dropna=False):
        printed = group["value"].iloc[0]
        match = datasets
        for column, value in zip(KEY, key[:-1]):
            match = match[(match[column] == value) | (match[column].isna() & pd.isna(value))]
        match = match[match["dataset"].map(domain_of) == key[-1]]
        if len(match) < 2:
            continue
        checked += 1
        assert abs(match["value"].mean() - printed) <= ROUNDING, (key, match["value"].mean(), printed)
    if reported["paper"].iloc[0] == "adaclip":
        assert checked >= 40


def test_ranks_recompute_with_the_library_function():
    """AdaCLIP Tab. 1-2 'Rank': the mean over the domain's datasets of each method's rank
    (1 = best) — recomputed by clipad_lib.results.domain_rank from the printed per-dataset rows."""
    reported = load_reported("adaclip")
    rows = reported[reported["table"].isin(["main:1", "main:2"]) & reported["value"].notna()]
    per_dataset = rows[~rows["dataset"].isin(DOMAINS)]
    per_dataset = per_dataset.assign(domain=[load_manifest(d).domain for d in per_dataset["dataset"]])
    ranks = domain_rank(per_dataset, by=["table", "domain", "metric"])
    printed = rows[rows["category"] == RANK_ROW].rename(columns={"dataset": "domain"})
    merged = printed.merge(ranks, on=["table", "domain", "metric", "method"], how="left")
    assert len(merged) == 2 * 4 * 6 and merged["rank"].notna().all()
    off = merged[(merged["rank"] - merged["value"]).abs() > 0.05 + 1e-9]
    found = set(zip(off["table"], off["method"], off["domain"], off["metric"]))
    listed = {(s["table"], s["method"], s["dataset"], s["metric"]) for s in printing_slips("adaclip")
              if s.get("category") == RANK_ROW}
    assert found == listed, off[["table", "domain", "metric", "method", "value", "rank"]].to_string()
    assert len(found) <= 6  # of the 48 printed ranks


def test_bad_rows_are_named(tmp_path):
    good = pd.read_csv(reported_csv("adaclip"), dtype=str, keep_default_na=False).head(3)
    bad = good.copy()
    bad.loc[0, "method"] = "adaclip_v2"
    bad.loc[1, "category"] = "bottles"
    bad.loc[2, "metric"] = "accuracy"
    with pytest.raises(ReportedNumbersError) as error:
        validate_reported(bad, "made-up.csv")
    message = str(error.value)
    assert "line 2: method 'adaclip_v2'" in message and "line 3: 'bottles' is not a category of mvtec" in message
    assert "line 4: unknown metric 'accuracy'" in message
    twice = pd.concat([good.head(1), good.head(1)], ignore_index=True)
    with pytest.raises(ReportedNumbersError, match="appears more than once"):
        validate_reported(twice)
    with pytest.raises(ReportedNumbersError, match="lacks the columns"):
        validate_reported(good.drop(columns=["variant"]))


def test_not_reported_cells_are_rows_without_a_value():
    fsac = load_reported("clip_fsac")
    dashes = fsac[fsac["value"].isna()]
    assert len(dashes) > 0 and set(dashes["method"]) >= {"regad", "graphcore"}


def test_display_names_and_table_labels():
    assert display_name("clip_fsac") == "CLIP-FSAC++" and display_name("clip_fsac_conference") == "CLIP-FSAC"
    assert display_name("patchcore") == "PatchCore" and display_name("clip_patch_memory") != "PatchCore"
    assert table_label("clip_fsac", "main:3") == "Tab. III" and table_label("adaclip", "supp:10") == "supp. Tab. 10"
