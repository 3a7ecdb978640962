import json

import pandas as pd
import pytest

from clipad_lib.results import (
    RunOutcome,
    format_mean_std,
    load_records,
    load_reported,
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

COMMON = dict(method="patchcore", dataset="synthetic", protocol={"resolution": 128, "aupro_variant": "mvtec"},
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
    path = record_path(tmp_path, "patchcore", "4shot", "synthetic", "pill", 0)
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


def test_paper_vs_ours(tmp_path):
    _run(tmp_path, "pill", 0, 0.90)
    _run(tmp_path, "pill", 1, 0.94)
    reported = tmp_path / "reported.csv"
    reported.write_text(
        "table,method,dataset,category,setting,metric,value,source\n"
        "T1,patchcore,synthetic,pill,4-shot,image_auroc,95.0,made-up test value\n"
        "T1,patchcore,synthetic,tile,4-shot,image_auroc,80.0,made-up test value\n"
    )
    table = paper_vs_ours(records_frame(load_records(tmp_path)), load_reported(reported)).set_index("category")
    assert table.loc["pill", "paper"] == 95.0 and table.loc["pill", "ours"] == 92.0
    assert table.loc["pill", "Δ"] == pytest.approx(-3.0)
    assert table.loc["tile", "status"] == "reported, not re-run" and pd.isna(table.loc["tile", "ours"])
    bad = tmp_path / "bad.csv"
    bad.write_text("method,value\nx,1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_reported(bad)


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    from clipad_lib.io import UMASK, atomic_write

    path = atomic_write(tmp_path / "a" / "b.json", "{}")
    assert path.read_text() == "{}" and (path.stat().st_mode & 0o777) == (0o666 & ~UMASK)
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]
    os.chmod(path, 0o444)
    atomic_write(path, "[]")  # replacing works even over a read-only file
    assert path.read_text() == "[]"


def test_adaclip_reported_numbers_are_complete_and_transcribed_right():
    from clipad_lib.papers import available_papers, reported_csv

    assert "adaclip" in available_papers()
    reported = load_reported(reported_csv("adaclip"))
    # AdaCLIP supp. Tab. 10: 6 methods x (12 VisA categories + Average) x 2 levels x (AUROC, max-F1).
    assert len(reported) == 6 * 13 * 4
    table = reported.set_index(["method", "category", "metric"])["value"]
    assert table[("adaclip", "candle", "image_auroc")] == 96.0
    assert table[("adaclip", "mean", "pixel_f1_max")] == 37.7
    assert table[("winclip", "pipe_fryum", "image_f1_max")] == 80.7
    assert table[("aprilgan", "mean", "image_f1_max")] == 80.7
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
    assert spec.path(tmp_path) == tmp_path / "records" / "patchcore-4shot-losses-both" / "synthetic" / "pill" / "seed0.json"
    frame = records_frame(load_records(tmp_path))
    assert frame[["setting", "variant"]].drop_duplicates().values.tolist() == [["4-shot", "losses-both"]]
    assert name_variants(frame, {"losses-both": "both losses"})["method"].tolist() == ["patchcore (both losses)"]
    # A variant is part of what names a run: another variant is another record, not a reuse.
    other = RunSpec(config={}, category="pill", seed=0, variant="losses-ce", **COMMON)
    assert other.reusable(tmp_path) is None and spec.reusable(tmp_path).input_hash == record.input_hash


def test_reported_numbers_name_only_registered_or_reported_only_methods(tmp_path):
    from clipad_lib.methods import list_methods
    from clipad_lib.papers import REPORTED_ONLY, available_papers, base_method, reported_csv

    for paper in available_papers():
        reported = load_reported(reported_csv(paper))
        assert {base_method(m) for m in reported["method"]} & set(list_methods()), paper
    assert not set(REPORTED_ONLY) & set(list_methods()), "a registered method is still listed as reported-only"
    bad = tmp_path / "reported.csv"
    bad.write_text("table,method,dataset,category,setting,metric,value,source\n"
                   "1,adaclip,visa,candle,zero-shot,image_auroc,90.0,Tab. 1\n"
                   "1,adaclipp (hybrid),visa,candle,zero-shot,image_auroc,91.0,Tab. 1\n")
    with pytest.raises(ValueError, match=r"neither registered nor reported-only: \['adaclipp \(hybrid\)'\]"):
        load_reported(bad)
