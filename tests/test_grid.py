"""Experiment grids and the notebook context: what runs, how often a model trains, resume, and
the smoke stand-ins."""
from __future__ import annotations

import pandas as pd
import pytest

from clipad_lib.engine import (Experiment, FewShotProtocol, Variant, ZeroShotPair, ZeroShotProtocol, adaclip_protocol,
                               anomalyclip_protocol, notebook_context, variants)
from clipad_lib.data.auxiliary import ZeroShotViolation
from clipad_lib.methods import method_entry

ADACLIP_DATASETS = ["mvtec", "visa", "mpdd", "btad", "ksdd", "dagm", "dtd", "headct", "brainmri", "br35h", "isic",
                    "clinicdb", "colondb", "tn3k"]
STANDINS = {"mvtec": ["brushed"], "clinicdb": ["grain"], "visa": ["checker"], "colondb": ["weave"],
            "headct": ["pill"], "isic": ["tile"]}


def test_adaclip_protocol_is_the_papers_swap():
    protocol = adaclip_protocol(ADACLIP_DATASETS)
    first, second = protocol.pairs
    assert first.train == ("mvtec", "clinicdb") and second.train == ("visa", "colondb")
    assert set(second.test) == {"mvtec", "clinicdb"} and len(first.test) == 12
    assert "visa" in first.test and "colondb" in first.test  # tested after training on MVTec AD + ClinicDB
    assert protocol.train_data_of("mvtec") == "visa+colondb"
    other = anomalyclip_protocol(["mvtec", "visa", "isic"])
    assert [(p.train, p.test) for p in other.pairs] == [(("mvtec",), ("visa", "isic")), (("visa",), ("mvtec",))]


def test_protocols_refuse_ambiguous_pairs():
    with pytest.raises(ValueError, match="more than one train→test pair"):
        ZeroShotProtocol((ZeroShotPair(("mvtec",), ("visa",)), ZeroShotPair(("mpdd",), ("visa",))))
    with pytest.raises(ValueError, match="both auxiliary and test"):
        ZeroShotProtocol((ZeroShotPair(("mvtec",), ("mvtec",)),))
    with pytest.raises(KeyError, match="unknown method 'adaclipp'"):
        Experiment("adaclipp", adaclip_protocol(["visa"]))
    with pytest.raises(ValueError, match="variant names repeat"):
        Experiment("adaclip", adaclip_protocol(["visa"]), variants=(Variant("a"), Variant("a")))


def test_jobs_list_the_grid_without_reading_data():
    grid = variants({"hsf-off": {"image_score": "max"}, "hsf-on": {}}, {"hsf-off": "max of the map"})
    protocol = adaclip_protocol(ADACLIP_DATASETS, seeds=(0, 1))
    trained = Experiment("adaclip", protocol, variants=grid).jobs()
    assert len(trained) == 2 * 2 * 2  # variants x seeds x pairs: one training per pair, not per test set
    assert {job.pair.train for job in trained} == {("mvtec", "clinicdb"), ("visa", "colondb")}
    free = Experiment("winclip", protocol).jobs()
    assert len(free) == 2 and free[0].pair.train == () and len(free[0].pair.test) == 14  # no training: one pass
    few = Experiment("clip_fsac", FewShotProtocol(("visa", "mvtec"), (1, 4), (0, 1, 2))).jobs()
    assert [(j.dataset, j.shots) for j in few] == [("visa", 1), ("visa", 4), ("mvtec", 1), ("mvtec", 4)]
    assert grid[0].label == "max of the map" and grid[1].label == "hsf-on"


def test_context_reads_stand_ins_under_the_papers_names(tmp_path, synthetic_root):
    ctx = notebook_context("smoke", results_dir=tmp_path, standins=STANDINS, paper="adaclip", quiet=True)
    visa, _ = ctx.dataset("visa")
    assert visa.name == "synthetic-as-visa" and visa.categories == ["checker"]
    assert ctx.paper_name(visa.name) == "visa" and not ctx.comparable
    with pytest.raises(KeyError, match="maps no synthetic stand-in to 'mpdd'"):
        ctx.dataset("mpdd")
    with pytest.raises(KeyError, match=r"has the categories \['checker'\], none of \['pill'\]"):
        ctx.dataset("visa", categories=["pill"])
    with pytest.raises(KeyError, match="reports no table 'main:7'; its tables: main:1"):
        ctx.compare(pd.DataFrame(), "main:7")
    frame = pd.DataFrame({"dataset": ["synthetic-as-isic", "synthetic-as-isic", "synthetic-as-headct",
                                      "synthetic-as-headct"],
                          "metric": ["image_auroc", "pixel_auroc", "image_auroc", "pixel_auroc"], "value": 0.5})
    kept = ctx.ours(frame)
    # ISIC has masks but no normal images; HeadCT image labels only (their manifests).
    assert sorted(zip(kept["dataset"], kept["metric"])) == [("headct", "image_auroc"), ("isic", "pixel_auroc")]


def test_run_trains_once_per_pair_serves_every_test_set_and_resumes(tmp_path, synthetic_root):
    ctx = notebook_context("smoke", results_dir=tmp_path, standins=STANDINS, quiet=True)
    protocol = adaclip_protocol(["mvtec", "visa", "headct", "isic"])
    changes = {**method_entry("adaclip").smoke_changes, "epochs": 1}
    experiment = Experiment("adaclip", protocol, changes=changes, variants=variants({"hsf-off": {"image_score": "max"}}))
    result = ctx.run(experiment, keep_detectors=True)
    assert result.trainings == 2 and result.reused == 0
    assert {r.dataset for r in result.records} == {f"synthetic-as-{d}" for d in ("mvtec", "visa", "headct", "isic")}
    assert {r.variant for r in result.records} == {"hsf-off"}
    assert all(r.identity["auxiliary"][0]["dataset"] == "synthetic-as-visa" for r in result.records
               if r.dataset == "synthetic-as-mvtec")
    detector = result.detectors[("hsf-off", "mvtec+clinicdb", 0)]
    assert detector.config.image_score == "max" and detector.config.epochs == 1
    again = notebook_context("smoke", results_dir=tmp_path, standins=STANDINS, resume=True, quiet=True).run(experiment)
    assert again.trainings == 0 and again.reused == len(result.records)
    assert [r.metrics for r in again.records] == [r.metrics for r in result.records]
    # The records' folder names the training data, so two protocols never share a record.
    assert {r.train_data for r in result.records} == {"synthetic-as-mvtec+synthetic-as-clinicdb",
                                                     "synthetic-as-visa+synthetic-as-colondb"}
    assert (tmp_path / "records" / "adaclip-zero-shot-hsf-off-on-synthetic-as-visa+synthetic-as-colondb").is_dir()
    # Asking for the detectors trains them even when every record is read back (figures need them).
    kept = notebook_context("smoke", results_dir=tmp_path, standins=STANDINS, resume=True,
                            quiet=True).run(experiment, keep_detectors=True)
    assert kept.trainings == 2 and kept.reused == len(result.records)
    assert kept.detectors[("hsf-off", "mvtec+clinicdb", 0)].loss_history


def test_a_bad_variant_fails_before_anything_runs():
    with pytest.raises(ValueError, match=r"adaclip variant 'typo'.*prompt_depthh.*AdaCLIPConfig fields: backbone"):
        Experiment("adaclip", adaclip_protocol(["visa"]), variants=variants({"typo": {"prompt_depthh": 2}}))
    with pytest.raises(KeyError, match="not a test set of this protocol"):
        adaclip_protocol(["visa"]).train_data_of("mpdd")


def test_full_shot_runs_fit_on_every_normal_training_image(tmp_path, synthetic_root, synthetic_train):
    ctx = notebook_context("smoke", results_dir=tmp_path, quiet=True)
    protocol = FewShotProtocol(("synthetic",), ("full",), (0,), ("pill",))
    result = ctx.run(Experiment("patchcore", protocol, changes=method_entry("patchcore").smoke_changes))
    (record,) = result.records
    normals = [r for r in synthetic_train.subset(category="pill").records if r.label == 0]
    assert record.setting == "full-shot" and len(record.identity["references"]) == len(normals)
    assert (tmp_path / "records" / "patchcore-fullshot").is_dir()
    assert (tmp_path / "kshot" / "synthetic" / "pill" / "kfull-seed0.json").is_file()
    with pytest.raises(ValueError, match="shots must be positive numbers or 'full'"):
        FewShotProtocol(("synthetic",), (0,), (0,))


def test_a_few_shot_method_that_trains_on_auxiliary_data_trains_once_and_records_it(tmp_path, synthetic_root):
    ctx = notebook_context("smoke", results_dir=tmp_path, quiet=True)
    test, auxiliary = ctx.subset("test-part", "synthetic", ["pill"]), ctx.subset("aux-part", "synthetic", ["tile"])
    protocol = FewShotProtocol((test,), (1, 2), (0,), auxiliary={test: (auxiliary,)})
    experiment = Experiment("aprilgan", protocol, changes={**method_entry("aprilgan").smoke_changes, "epochs": 1})
    result = ctx.run(experiment, keep_detectors=True)
    assert result.trainings == 1  # one model for both shot counts
    assert result.detectors[("", test, 2)].trained_categories == ["tile"]
    assert {(r.setting, r.train_data, r.category) for r in result.records} == {("1-shot", "synthetic", "pill"),
                                                                                ("2-shot", "synthetic", "pill")}
    assert all(r.identity["auxiliary"][0]["dataset"] == "synthetic" and r.identity["auxiliary_seed"] == 0
               and r.identity["auxiliary"][0]["files"] != r.identity["test_files"] for r in result.records)
    again = notebook_context("smoke", results_dir=tmp_path, resume=True, quiet=True)
    again.subset("test-part", "synthetic", ["pill"]), again.subset("aux-part", "synthetic", ["tile"])
    reread = again.run(experiment)
    assert reread.trainings == 0 and reread.reused == 2  # nothing trains when every record is read back
    # Methods that do not train on auxiliary data ignore it.
    memory = ctx.run(Experiment("clip_patch_memory", protocol, changes=method_entry("clip_patch_memory").smoke_changes))
    assert memory.trainings == 0 and {r.train_data for r in memory.records} == {""}
    overlapping = FewShotProtocol((test,), (1,), (0,), auxiliary={test: (test,)})
    with pytest.raises(ZeroShotViolation):
        ctx.run(Experiment("aprilgan", overlapping, changes=method_entry("aprilgan").smoke_changes))
    with pytest.raises(ValueError, match="not in"):
        FewShotProtocol((test,), (1,), (0,), auxiliary={"elsewhere": (auxiliary,)})
