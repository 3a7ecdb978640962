"""``clipad check``: what each notebook needs, found or missing, without a traceback."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clipad_lib import cli
from clipad_lib.backbones.locate import locate_clip_weights, locate_timm_weights, locate_weights
from clipad_lib.data import list_manifests
from clipad_lib.preflight import (PROTOCOLS, BackboneUse, check_notebooks, estimate_gpu_memory_gb, notebook_needs)
from clipad_lib.profiles import profile_parameters
from clipad_lib.runner import NOTEBOOKS_DIR, plan_parameters, resolve_notebooks

PAPER_DATASETS = ["mvtec", "visa", "mpdd", "btad", "ksdd", "dagm", "dtd", "headct", "brainmri", "br35h", "isic",
                  "clinicdb", "colondb", "tn3k"]


def _paper_parameters(stem: str, tmp_path: Path) -> dict:
    notebook = resolve_notebooks([stem])
    return plan_parameters(notebook, "paper", {}, False, tmp_path)[0]


def test_needs_are_read_from_the_parameters_and_the_protocols(tmp_path):
    needs = notebook_needs("11_adaclip_main_tables", _paper_parameters("11_adaclip_main_tables", tmp_path))
    assert sorted(needs.datasets) == sorted(PAPER_DATASETS)
    assert {(u.backbone, u.pretrained) for u in needs.backbones} == {
        ("ViT-L-14-336", "openai"), ("ViT-B-16-plus-240", "laion400m_e31"),
        ("vit_small_patch14_dinov2", "lvd142m"), ("samvit_large_patch16", "sa1b")}
    # A narrowed test list still needs the training sets of AdaCLIP's protocol.
    narrowed = {**_paper_parameters("11_adaclip_main_tables", tmp_path), "test_datasets": ["btad"]}
    assert set(notebook_needs("11_adaclip_main_tables", narrowed).datasets) == {"btad", "mvtec", "clinicdb"}
    # The CNN methods take the shared `cnn` backbone, not their configs' default.
    fsac = notebook_needs("20_clip_fsac_few_shot", _paper_parameters("20_clip_fsac_few_shot", tmp_path))
    assert ("wide_resnet50_2", "tv_in1k") in {(u.backbone, u.pretrained) for u in fsac.backbones}
    assert set(fsac.datasets) == {"visa", "mvtec"}
    # Smoke: every stand-in is the synthetic set.
    _, smoke = profile_parameters("smoke", "11_adaclip_main_tables")
    smoke_needs = notebook_needs("11_adaclip_main_tables", {**smoke, "profile": "smoke"})
    assert smoke_needs.datasets == ["synthetic"]


def test_the_protocol_table_matches_the_notebooks():
    names = ("adaclip_protocol", "anomalyclip_protocol", "swap_protocol")
    for path in sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        called = {name for name in names if re.search(rf"\b{name}\(", source)}
        declared = set(PROTOCOLS.get(path.stem, ("", ()))[1])
        assert called == declared, f"{path.stem}: calls {sorted(called)}, preflight.PROTOCOLS says {sorted(declared)}"


def test_check_paper_on_this_machine_lists_every_missing_dataset_and_weight(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("CLIPAD_DATA", raising=False)
    monkeypatch.setenv("CLIPAD_RESULTS", str(tmp_path))
    assert cli.main(["check", "--profile", "paper"]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out and "CLIPAD_DATA is unset" in out
    for name in PAPER_DATASETS:
        assert re.search(rf"MISSING {name} \[", out), name
    for weights in ("ViT-L-14-336/openai", "ViT-B-16-plus-240/laion400m_e31", "vit_small_patch14_dinov2/lvd142m",
                    "samvit_large_patch16/sa1b", "ViT-B-16/openai", "wide_resnet50_2/tv_in1k"):
        assert f"MISSING {weights} [" in out, weights
    assert "MISSING cuda [" in out and "a formula, not a measurement" in out
    assert "download mvtec_anomaly_detection.tar.xz" in out  # the manifest's hint
    assert cli.main(["check", "--profile", "paper", "20_clip_fsac_few_shot", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and {c["notebook"] for c in report["checks"]} == {"20_clip_fsac_few_shot"}


def test_check_smoke_passes_and_a_bad_copy_is_named(monkeypatch, capsys, tmp_path, synthetic_root):
    monkeypatch.setenv("CLIPAD_RESULTS", str(tmp_path))
    assert cli.main(["check", "--profile", "smoke"]) == 0
    assert " 0 missing (profile smoke)" in capsys.readouterr().out
    # A dataset folder that exists but does not match its manifest.
    (tmp_path / "data" / "mvtec_anomaly_detection" / "bottle" / "test" / "good").mkdir(parents=True)
    monkeypatch.setenv("CLIPAD_DATA", str(tmp_path / "data"))
    report = check_notebooks(["00_data_and_metrics"], "paper")
    [dataset] = [c for c in report.checks if c.kind == "dataset"]
    assert not dataset.ok and "does not match its manifest" in dataset.message
    assert "category 'cable' is missing" in dataset.message and "clipad data verify mvtec" in dataset.hint
    # An override is checked like clipad run's.
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['shotz'\]"):
        check_notebooks(["00_data_and_metrics"], "paper", {"shotz": 1})


def test_weights_are_found_where_open_clip_and_timm_look(tmp_path):
    # A Hugging Face cache entry as huggingface_hub lays it out.
    repo = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert not locate_clip_weights("ViT-B-16", "openai", cache_dir=tmp_path).found
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    found = locate_clip_weights("ViT-B-16", "openai", cache_dir=tmp_path)
    assert found.found and found.where.endswith("open_clip_model.safetensors")
    checkpoint = tmp_path / "dinov2.pth"
    assert not locate_timm_weights("vit_small_patch14_dinov2", str(checkpoint)).found
    checkpoint.write_bytes(b"x")
    assert locate_timm_weights("vit_small_patch14_dinov2", str(checkpoint)).found
    assert locate_weights("clipad-tiny-ViT", "clipad-synthetic").found
    assert locate_weights("resnet18", None).where.startswith("random init")
    wrong = locate_weights("ViT-B-16", "no-such-tag")
    assert not wrong.found and "openai" in wrong.hint
    assert "unknown architecture" in locate_weights("no-such-net", None).where


def test_memory_estimate_grows_with_what_a_method_keeps():
    frozen = BackboneUse("aprilgan", "ViT-L-14-336", "openai", 518, 1)
    trained = BackboneUse("adaclip", "ViT-L-14-336", "openai", 518, 1)
    assert 1.5 < estimate_gpu_memory_gb(frozen) < estimate_gpu_memory_gb(trained) < 40
    batch = BackboneUse("aprilgan", "ViT-L-14-336", "openai", 518, 8)
    assert estimate_gpu_memory_gb(batch) > estimate_gpu_memory_gb(frozen)
    assert estimate_gpu_memory_gb(BackboneUse("patchcore", "wide_resnet50_2", "tv_in1k", 224, 8)) is None
    assert "synthetic" in list_manifests()
