import json

import pandas as pd
import pytest

from clipad_lib.results import (
    RunOutcome,
    format_mean_std,
    load_records,
    load_reported,
    domain_rows,
    name_variants,
    paper_vs_ours,
    record_path,
    records_frame,
    RunSpec,
    run_recorded,
    run_tag,
    summary_table,
    write_table,
)

COMMON = dict(method="clip_patch_memory", dataset="synthetic", protocol={"resolution": 128, "aupro_variant": "mvtec"},
              setting="4-shot")


def _run(results_dir, category, seed, value, config=None, resume=False, calls=None):
    def run():
        if calls is not None:
            calls.append((category, seed))
        return RunOutcome({"image_auroc": value, "pixel_auroc": value / 2, "aupro": None}, {"predict_s": 1.0})

    spec = RunSpec(config=config or {"k": 4}, category=category, seed=seed, **COMMON)
    return run_recorded(spec, run, results_dir=results_dir, resume=resume)


def test_record_is_written_with_provenance(tmp_path):
    record, reused = _run(tmp_path, "pill", 0, 0.9)
    assert not reused
    path = record_path(tmp_path, "clip_patch_memory", "4shot", "synthetic", "pill", 0)
    stored = json.loads(path.read_text())
    assert stored["metrics"]["image_auroc"] == 0.9 and stored["protocol"]["aupro_variant"] == "mvtec"
    assert stored["packages"]["torch"] and stored["code_fingerprint"] and stored["device"].startswith("cpu")
    assert stored["input_hash"] == record.input_hash
    assert stored["setting"] == "4-shot" and stored["variant"] == "" and "tag" not in stored
    assert not list(path.parent.glob("*.tmp"))


def test_resume_skips_unchanged_runs_and_reruns_changed_ones(tmp_path):
    calls = []
    _run(tmp_path, "pill", 0, 0.9, calls=calls)
    _, reused = _run(tmp_path, "pill", 0, 0.9, resume=True, calls=calls)
    assert reused and calls == [("pill", 0)]
    _, reused = _run(tmp_path, "pill", 0, 0.9, config={"k": 8}, resume=True, calls=calls)
    assert not reused and len(calls) == 2
    _, reused = _run(tmp_path, "pill", 0, 0.9, calls=calls)  # without resume: always recomputed
    assert not reused and len(calls) == 3


def test_a_failing_run_leaves_no_record(tmp_path):
    def broken():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        run_recorded(RunSpec(config={}, category="pill", seed=0, **COMMON), broken, results_dir=tmp_path)
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").rglob("*.json"))


def test_summary_table_means_and_stds(tmp_path):
    for seed, (pill, tile) in enumerate([(0.90, 0.70), (0.94, 0.74)]):
        _run(tmp_path, "pill", seed, pill)
        _run(tmp_path, "tile", seed, tile)
    table = summary_table(load_records(tmp_path), metrics=("image_auroc", "pixel_auroc"))
    rows = table.set_index("category")
    assert rows.loc["pill", "image_auroc"] == pytest.approx(92.0)
    assert rows.loc["pill", "image_auroc_std"] == pytest.approx(2.8284271, rel=1e-6)
    assert rows.loc["mean", "image_auroc"] == pytest.approx(82.0)  # (80 + 84) / 2
    assert rows.loc["mean", "image_auroc_std"] == pytest.approx(2.8284271, rel=1e-6)
    assert list(table["category"]) == ["pill", "tile", "mean"]
    shown = format_mean_std(table).set_index("category")
    assert shown.loc["pill", "image_auroc"] == "92.0 ± 2.8"
    csv_path, md_path = write_table(table, tmp_path / "tables" / "t")
    assert pd.read_csv(csv_path).shape[0] == 3 and "92.0 ± 2.8" in md_path.read_text()


HEADER = ",".join(("paper", "table", "method", "variant", "dataset", "category", "setting", "train_data", "backbone",
                   "image_size", "metric", "value", "spread", "quoted_from", "source_line"))


def test_paper_vs_ours(tmp_path):
    _run(tmp_path, "pill", 0, 0.90)
    _run(tmp_path, "pill", 1, 0.94)
    reported = tmp_path / "reported.csv"
    reported.write_text(
        HEADER + "\n"
        "adaclip,main:1,clip_patch_memory,,synthetic,pill,4-shot,,,,image_auroc,95.0,,,made-up\n"
        "adaclip,main:1,clip_patch_memory,,synthetic,tile,4-shot,,,,image_auroc,80.0,,,made-up\n"
        "adaclip,main:1,clip_patch_memory,,synthetic,hexnut,4-shot,,,,image_auroc,,,,made-up dash\n"
    )
    table = paper_vs_ours(records_frame(load_records(tmp_path)), load_reported(reported)).set_index("category")
    assert table.loc["pill", "paper"] == 95.0 and table.loc["pill", "ours"] == 92.0
    assert table.loc["pill", "Δ"] == pytest.approx(-3.0)
    assert table.loc["tile", "status"] == "reported, not re-run: not in this notebook's grid (see its parameters)"
    assert pd.isna(table.loc["tile", "ours"])
    assert table.loc["hexnut", "status"] == "not reported"
    stand_in = paper_vs_ours(records_frame(load_records(tmp_path)), load_reported(reported), comparable=False)
    assert stand_in.set_index("category").loc["pill", "status"].startswith("re-run on a smoke stand-in")
    assert stand_in["Δ"].isna().all()
    bad = tmp_path / "bad.csv"
    bad.write_text("method,value\nx,1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_reported(bad)


def test_domain_rows_average_datasets_and_rank_methods():
    """Two methods on three datasets of two domains: hand-computed means and ranks."""
    rows = []
    values = {"a": {"d1": 0.9, "d2": 0.5, "d3": 0.7}, "b": {"d1": 0.8, "d2": 0.6, "d3": 0.7}}
    for method, per_dataset in values.items():
        for dataset, value in per_dataset.items():
            for category, offset in (("c1", -0.1), ("c2", 0.1)):
                rows.append({"method": method, "variant": "", "setting": "zero-shot", "dataset": dataset,
                             "category": category, "seed": 0, "metric": "image_auroc", "value": value + offset})
    long = pd.DataFrame(rows)
    domains = domain_rows(long, {"d1": "industrial", "d2": "industrial", "d3": "medical"})
    shown = domains.set_index(["method", "dataset", "category"])["value"]
    assert shown[("a", "industrial", "mean")] == pytest.approx(0.7)
    assert shown[("b", "industrial", "mean")] == pytest.approx(0.7)
    assert shown[("a", "industrial", "rank")] == pytest.approx(1.5)   # 1st on d1, 2nd on d2
    assert shown[("a", "medical", "rank")] == pytest.approx(1.5)      # tied on d3: they share 1.5
    assert shown[("b", "medical", "mean")] == pytest.approx(0.7)


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    from clipad_lib.io import UMASK, atomic_write

    path = atomic_write(tmp_path / "a" / "b.json", "{}")
    assert path.read_text() == "{}" and (path.stat().st_mode & 0o777) == (0o666 & ~UMASK)
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]
    os.chmod(path, 0o444)
    atomic_write(path, "[]")  # replacing works even over a read-only file
    assert path.read_text() == "[]"


def test_adaclip_reported_numbers_spot_checks():
    from clipad_lib.papers import available_papers, reported_csv

    assert "adaclip" in available_papers()
    reported = load_reported("adaclip")
    tab10 = reported[reported["table"] == "supp:10"]
    # AdaCLIP supp. Tab. 10: 6 methods x (12 VisA categories + Average) x 2 levels x (AUROC, max-F1).
    assert len(tab10) == 6 * 13 * 4
    table = tab10.set_index(["method", "category", "metric"])["value"]
    assert table[("adaclip", "candle", "image_auroc")] == 96.0
    assert table[("adaclip", "mean", "pixel_f1_max")] == 37.7
    assert table[("winclip", "pipe_fryum", "image_f1_max")] == 80.7
    assert table[("aprilgan", "mean", "image_f1_max")] == 80.7
    tab6 = reported[reported["table"] == "main:6"].set_index(["variant", "dataset", "metric"])["value"]
    # Tab. 6's domain labels are swapped in the text extraction; the ViT-L row equals Tab. 1/2's averages.
    assert tab6[("backbone-vit_l_14_336", "medical", "image_auroc")] == 94.6
    assert tab6[("backbone-vit_b_16", "industrial", "pixel_f1_max")] == 42.1
    quoted = reported[reported["quoted_from"] != ""]
    assert set(quoted["method"]) == {"winclip", "anomalyclip"}
    with pytest.raises(FileNotFoundError, match="available: adaclip"):
        reported_csv("nonexistent")


def test_with_category_mean_matches_the_average_row(tmp_path):
    from clipad_lib.results import with_category_mean

    _run(tmp_path, "pill", 0, 0.90)
    _run(tmp_path, "tile", 0, 0.70)
    long = with_category_mean(records_frame(load_records(tmp_path)))
    mean = long[(long["category"] == "mean") & (long["metric"] == "image_auroc")]["value"]
    assert list(mean) == [pytest.approx(0.80)]


def test_setting_and_variant_are_fields_and_the_tag_only_a_path(tmp_path):
    assert run_tag("4-shot") == "4shot" and run_tag("4-shot", "losses-both") == "4shot-losses-both"
    assert run_tag("zero-shot") == "zero-shot" and run_tag("zero-shot", "frozen") == "zero-shot-frozen"
    spec = RunSpec(config={}, category="pill", seed=0, variant="losses-both", **COMMON)
    record, _ = run_recorded(spec, lambda: RunOutcome({"image_auroc": 0.8}), results_dir=tmp_path)
    assert spec.path(tmp_path) == tmp_path / "records" / "clip_patch_memory-4shot-losses-both" / "synthetic" / "pill" / "seed0.json"
    frame = records_frame(load_records(tmp_path))
    assert frame[["setting", "variant"]].drop_duplicates().values.tolist() == [["4-shot", "losses-both"]]
    assert name_variants(frame, {"losses-both": "both losses"})["method"].tolist() == ["clip_patch_memory (both losses)"]
    # A variant is part of what names a run: another variant is another record, not a reuse.
    other = RunSpec(config={}, category="pill", seed=0, variant="losses-ce", **COMMON)
    assert other.reusable(tmp_path) is None and spec.reusable(tmp_path).input_hash == record.input_hash


def test_reported_numbers_name_only_registered_or_reported_only_methods(tmp_path):
    from clipad_lib.methods import list_methods
    from clipad_lib.papers import REPORTED_ONLY, available_papers

    for paper in available_papers():
        reported = load_reported(paper)
        assert set(reported["method"]) & set(list_methods()), paper
    assert not set(REPORTED_ONLY) & set(list_methods()), "a registered method is still listed as reported-only"
    assert all(len(entry.why) > 20 for entry in REPORTED_ONLY.values())  # each says why it is not re-run
    reported = load_reported("clip_fsac")
    comparison = paper_vs_ours(pd.DataFrame(columns=["method", "variant", "dataset", "category", "setting", "metric",
                                                     "seed", "value"]),
                               reported[(reported["method"] == "graphcore") & reported["value"].notna()])
    assert set(comparison["status"]) == {f"reported, not re-run: {REPORTED_ONLY['graphcore'].why}"}
    bad = tmp_path / "reported.csv"
    bad.write_text(HEADER + "\n"
                   "adaclip,main:1,adaclip,,visa,candle,zero-shot,,,,image_auroc,90.0,,,x\n"
                   "adaclip,main:1,adaclipp,,visa,candle,zero-shot,,,,image_auroc,91.0,,,x\n")
    with pytest.raises(ValueError, match=r"line 3: method 'adaclipp' is neither registered nor in papers.REPORTED_ONLY"):
        load_reported(bad)


def test_ranks_compare_only_among_the_same_methods():
    reported = pd.DataFrame({"table": "main:1", "method": ["a", "b", "c"], "variant": "", "dataset": "industrial",
                             "category": "rank", "setting": "zero-shot", "metric": "image_auroc",
                             "value": [1.0, 2.0, 3.0]})
    ours = pd.DataFrame({"method": ["a", "b"], "variant": "", "dataset": "industrial", "category": "rank",
                         "setting": "zero-shot", "metric": "image_auroc", "seed": 0, "value": [1.0, 2.0]})
    shown = paper_vs_ours(ours, reported).set_index("method")
    assert shown.loc["a", "status"].startswith("ranked among 2 re-run methods, the paper among 3")
    assert pd.isna(shown.loc["a", "Δ"]) and shown.loc["a", "ours"] == 1.0
    everyone = pd.concat([ours, ours.head(1).assign(method="c", value=3.0)])
    assert paper_vs_ours(everyone, reported).set_index("method").loc["a", "Δ"] == 0.0
