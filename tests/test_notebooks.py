"""The notebooks run headless in the smoke profile; failures are reported by cell."""
import json

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from clipad_lib import cli
from clipad_lib.profiles import available_profiles, profile_parameters
from clipad_lib.runner import NOTEBOOKS_DIR, parse_parameter, run_notebooks


def test_committed_notebooks_are_stripped_and_parameterized():
    notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), path.name
        assert "parameters" in cells[1]["metadata"].get("tags", []) or any(
            "parameters" in c["metadata"].get("tags", []) for c in cells), path.name


def test_notebook_00_runs_in_the_smoke_profile(tmp_path, synthetic_root):
    results = run_notebooks(["00_data_and_metrics"], "smoke", {"seeds": [0], "categories": ["pill", "weave"]},
                            results_root=tmp_path, progress=False)
    assert results[0].ok, results[0].error
    assert (tmp_path / "00_data_and_metrics.ipynb").is_file()
    table = pd.read_csv(tmp_path / "tables" / "00_clip_patch_memory_4shot_synthetic.csv")
    assert list(table["category"]) == ["pill", "weave", "mean"]
    assert table.set_index("category").loc["mean", "pixel_auroc"] > 70
    assert len(list((tmp_path / "records").rglob("seed0.json"))) == 2
    record = json.loads(next((tmp_path / "records").rglob("pill/seed0.json")).read_text())
    samples = record["samples"]  # per-image scores, for the run browser's worst samples
    assert len(samples["score"]) == len(samples["image"]) == 26 and sum(samples["label"]) == 16
    assert all(image.startswith("pill/test/") for image in samples["image"])
    assert (tmp_path / "00_data_and_metrics.html").is_file()
    assert (tmp_path / "figures" / "00_samples_synthetic.png").stat().st_size > 0
    assert (tmp_path / "kshot" / "synthetic" / "pill" / "k4-seed0.json").is_file()
    # Resume: the records are read back, not recomputed.
    again = run_notebooks(["00_data_and_metrics"], "smoke",
                          {"seeds": [0], "categories": ["pill", "weave"]}, resume=True,
                          results_root=tmp_path, progress=False)
    executed = nbformat.read(tmp_path / "00_data_and_metrics.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert again[0].ok and "2 runs, 2 reused" in printed


def test_a_failing_notebook_names_its_cell_and_the_others_still_run(tmp_path):
    broken = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                                 new_code_cell("y = x / 0")])
    fine = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}), new_code_cell("x + 1")])
    for name, notebook in (("01_broken.ipynb", broken), ("02_fine.ipynb", fine)):
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, tmp_path / name)
    results = run_notebooks([str(tmp_path / "01_broken.ipynb"), str(tmp_path / "02_fine.ipynb")], "smoke",
                            results_root=tmp_path / "out", progress=False)
    assert [r.ok for r in results] == [False, True]
    assert "cell 1" in results[0].error and "ZeroDivisionError" in results[0].error and "x / 0" in results[0].error


def test_unknown_parameter_and_notebook_are_refused(tmp_path):
    with pytest.raises(ValueError, match="has no parameter"):
        run_notebooks(["00_data_and_metrics"], "smoke", {"shotz": 2}, results_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="available: 00_data_and_metrics"):
        run_notebooks(["99_nothing"], "smoke", results_root=tmp_path)
    assert parse_parameter("seeds=[0, 1]") == ("seeds", [0, 1])
    assert parse_parameter("pretrained=null") == ("pretrained", None)
    with pytest.raises(ValueError, match="key=value"):
        parse_parameter("seeds")


def test_cli_data_commands(tmp_path, synthetic_root, capsys):
    assert cli.main(["data", "verify", "synthetic"]) == 0
    assert "OK: the copy matches its manifest" in capsys.readouterr().out
    assert cli.main(["data", "verify", "mvtec", "--root", str(tmp_path)]) == 1
    assert "category 'bottle' is missing" in capsys.readouterr().out
    assert cli.main(["data", "list"]) == 0
    assert "MVTec AD" in capsys.readouterr().out
    assert cli.main(["run", "99_nothing"]) == 2


def test_a_hanging_cell_fails_at_the_cell_timeout(tmp_path):
    slow = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                               new_code_cell("import time; time.sleep(60)")])
    slow.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(slow, tmp_path / "slow.ipynb")
    [result] = run_notebooks([str(tmp_path / "slow.ipynb")], "smoke", results_root=tmp_path / "out",
                             progress=False, cell_timeout=3)
    assert not result.ok and "cell timeout" in result.error


def test_a_second_run_into_a_busy_results_folder_is_refused_naming_the_first(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    fine = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}), new_code_cell("x + 1")])
    fine.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(fine, tmp_path / "fine.ipynb")
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from clipad_lib.runner import results_folder_lock as lock\n"
         f"with lock(__import__('pathlib').Path({str(out)!r}), ['11_adaclip']):\n"
         "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by another `clipad run` \(pid {holder.pid} on .*11_adaclip"):
            run_notebooks([str(tmp_path / "fine.ipynb")], "smoke", results_root=out, progress=False)
        assert not (out / "fine.ipynb").exists()  # nothing was written beside the other run's files
        monkeypatch.setenv("CLIPAD_RESULTS", str(tmp_path))
        (tmp_path / "smoke").symlink_to(out)  # the CLI's results folder for the smoke profile
        assert cli.main(["run", str(tmp_path / "fine.ipynb"), "--profile", "smoke"]) == 2
        assert "CLIPAD_RESULTS=/another/folder" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # The lock ends with its process: a killed run leaves nothing to clean up.
    [result] = run_notebooks([str(tmp_path / "fine.ipynb")], "smoke", results_root=out, progress=False)
    assert result.ok


def test_notebook_10_runs_and_resume_skips_training(tmp_path, synthetic_root):
    _, section = profile_parameters("smoke", "10_adaclip_zero_shot")
    methods = {name: {**changes, "epochs": 1} if "epochs" in changes else changes
               for name, changes in section["methods"].items()}
    short = {"methods": methods, "test_categories": ["pill", "weave"]}
    [result] = run_notebooks(["10_adaclip_zero_shot"], "smoke", short, results_root=tmp_path, progress=False)
    assert result.ok, result.error
    table = pd.read_csv(tmp_path / "tables" / "10_zero_shot_synthetic.csv")
    # Runs name their auxiliary data; WinCLIP trains on nothing.
    assert sorted(set(table["run"])) == ["adaclip-zero-shot-on-synthetic", "aprilgan-zero-shot-on-synthetic",
                                         "winclip-zero-shot"]
    assert len(list((tmp_path / "figures").glob("10_overlays_*.png"))) == 3
    [again] = run_notebooks(["10_adaclip_zero_shot"], "smoke", short, resume=True, results_root=tmp_path,
                            progress=False)
    executed = nbformat.read(tmp_path / "10_adaclip_zero_shot.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    # The records are read back; the model is trained again only because the figures need it.
    assert again.ok and "adaclip: 2 categories, 2 reused, 1 training(s)" in printed


def test_clip_fsac_notebooks_run_in_the_smoke_profile(tmp_path, synthetic_root):
    _, section = profile_parameters("smoke", "20_clip_fsac_few_shot")
    overrides = {"seeds": [0], "shots": [1, 4], "categories": ["pill", "washer"],
                 "aprilgan": {**section["aprilgan"], "epochs": 1}}
    results = run_notebooks(["20_clip_fsac_few_shot"], "smoke", overrides, results_root=tmp_path, progress=False)
    assert results[0].ok, results[0].error
    per_category = pd.read_csv(tmp_path / "tables" / "20_i_auroc_per_category_synthetic.csv")
    assert set(per_category["method"]) == {"clip_fsac", "winclip", "clip_patch_memory", "patchcore", "padim", "spade",
                                           "aprilgan"}
    # APRIL-GAN's heads trained once, on the half of the categories that holds neither pill nor washer
    executed = nbformat.read(tmp_path / "20_clip_fsac_few_shot.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert ("APRIL-GAN few-shot: 1 training(s) of its heads; auxiliary data: synthetic:checker+pill+washer+weave "
            "<- synthetic:brushed+grain+hexnut+tile") in printed
    aprilgan_records = [json.loads(p.read_text()) for p in (tmp_path / "records").glob("aprilgan-*shot-on-synthetic/*/*/seed0.json")]
    assert len(aprilgan_records) == 4 and {r["category"] for r in aprilgan_records} == {"pill", "washer"}
    assert list(per_category.columns[-3:]) == ["pill", "washer", "mean"]
    table_iii = pd.read_csv(tmp_path / "tables" / "20_tab3_ours.csv")
    assert {"clip_ac", "clip_fsac"} <= set(table_iii["method"])
    assert len(list((tmp_path / "records").glob("clip_fsac-*shot/synthetic/*/seed0.json"))) == 4
    for figure in ("20_gradient_maps", "20_tsne", "20_score_histograms"):
        assert (tmp_path / "figures" / f"{figure}_synthetic_pill.png").stat().st_size > 0
    ablations = run_notebooks(["21_clip_fsac_ablations"], "smoke",
                              {"ablation_categories": ["washer"], "ablation_shots": [4],
                               "gamma1_values": [0.01, 0.7]}, results_root=tmp_path, progress=False)
    assert ablations[0].ok, ablations[0].error
    table_vi = pd.read_csv(tmp_path / "tables" / "21_tabVI_ours.csv")
    assert sorted(table_vi["method"]) == ["TF + VT", "TF only", "VT only", "no descriptor"]
    assert (tmp_path / "figures" / "21_fig8_optimizers_synthetic.png").stat().st_size > 0


def test_every_profile_section_is_declared_by_its_notebook():
    """profiles/<profile>.yaml: each notebook section names a notebook, and every key of it is a
    parameter that notebook declares (so no setting silently does nothing)."""
    import papermill

    from clipad_lib.profiles import profile_sections

    notebooks = {p.stem: p for p in NOTEBOOKS_DIR.glob("[0-9]*.ipynb")}
    assert set(available_profiles()) == {"paper", "smoke"}
    for profile in available_profiles():
        common, sections = profile_sections(profile)
        assert set(sections) == set(notebooks), profile
        for stem, section in sections.items():
            declared = set(papermill.inspect_notebook(str(notebooks[stem])))
            assert set(section) <= declared, (profile, stem, sorted(set(section) - declared))
            assert {"profile", "device"} <= declared, stem


def test_an_adaclip_paper_notebook_runs_on_smoke_stand_ins(tmp_path, synthetic_root):
    """Notebook 14 through papermill on four stand-ins: both train→test pairs of AnomalyCLIP's
    protocol run, every "ours" cell of supp. Tab. 6-7 on those datasets fills, Δ is marked not
    comparable."""
    _, section = profile_parameters("smoke", "14_adaclip_anomalyclip_protocol")
    overrides = {"test_datasets": ["mvtec", "visa", "headct", "isic"],
                 "adaclip": {**section["adaclip"], "epochs": 1}, "anomalyclip": {**section["anomalyclip"], "epochs": 1}}
    [result] = run_notebooks(["14_adaclip_anomalyclip_protocol"], "smoke", overrides, results_root=tmp_path,
                             progress=False)
    assert result.ok, result.error
    ours = pd.read_csv(tmp_path / "tables" / "14_supp_tab6_7_ours.csv").set_index(["dataset", "method"])
    assert {"mvtec", "visa", "headct", "isic", "industrial", "medical"} <= set(ours.index.get_level_values(0))
    for method in ("adaclip", "anomalyclip"):
        assert pd.isna(ours.loc[("isic", method), "image_auroc"]) and pd.isna(ours.loc[("headct", method), "pixel_auroc"])
    comparison = pd.read_csv(tmp_path / "tables" / "14_paper_vs_ours_supp_tab6.csv", keep_default_na=False)
    ran = comparison[comparison["dataset"].isin(["mvtec", "visa", "industrial"])]
    assert set(ran["method"]) == {"adaclip", "anomalyclip"}  # AnomalyCLIP re-run beside its quoted numbers
    assert len(ran) == 12 and set(ran["status"]) == {"re-run on a smoke stand-in (not comparable)"}
    assert (ran["Δ"] == "").all()
    assert set(comparison.loc[comparison["method"] == "anomalyclip", "quoted_from"]) == {"AnomalyCLIP (ICLR 2024)"}
    records = list((tmp_path / "records").glob("adaclip-zero-shot-anomalyclip-protocol-on-*/*/*/seed0.json"))
    assert len(records) == 6  # mvtec and visa stand-ins have two categories each
    assert len(list((tmp_path / "records").glob("anomalyclip-zero-shot-on-*/*/*/seed0.json"))) == 6
    full_shot = pd.read_csv(tmp_path / "tables" / "14_paper_vs_ours_supp_tab8.csv", keep_default_na=False)
    rerun = full_shot[(full_shot["method"] == "patchcore") & full_shot["dataset"].isin(["mvtec", "visa"])]
    assert len(rerun) == 8 and set(rerun["status"]) == {"re-run on a smoke stand-in (not comparable)"}  # 2 x 4 metrics
    assert len(list((tmp_path / "records").glob("patchcore-fullshot/*/*/seed0.json"))) == 4
    assert set(full_shot.loc[full_shot["method"] == "cdo", "status"]) == {
        "reported, not re-run: a full-shot method with its own training recipe and no code in this workbook"}


def test_the_adaclip_analyses_notebook_draws_its_figures_and_widgets(tmp_path, synthetic_root):
    """Notebook 13: Fig. 4, Fig. 7 and supp. Fig. 2 as PNGs and three interactive explorers, each
    dataset seen through a model that was not trained on it (a zero-shot refusal would fail it)."""
    _, section = profile_parameters("smoke", "13_adaclip_analyses")
    # VisA alone: its models train on the MVTec AD + ClinicDB stand-ins, the same protocol at half the cost
    overrides = {"max_images": 4, "datasets": ["visa"], "adaclip": {**section["adaclip"], "epochs": 1}}
    [result] = run_notebooks(["13_adaclip_analyses"], "smoke", overrides, results_root=tmp_path, progress=False)
    assert result.ok, result.error
    for figure in ("13_fig4_pca_variants_visa", "13_fig7_tsne_backbones", "13_supp_fig2_hsf_clusters_visa"):
        assert (tmp_path / "figures" / f"{figure}.png").stat().st_size > 0
    executed = nbformat.read(tmp_path / "13_adaclip_analyses.ipynb", as_version=4)
    widgets = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {}) and "VBox" in o["data"]["text/plain"]]
    assert len(widgets) == 3


def test_the_tiny_clip_notebook_shows_the_shipped_model(tmp_path, synthetic_root):
    """Notebook 01 without retraining: the corpus and training figures, the shipped file's
    held-out figures equal to its log's, and a zero-shot table where the shipped model beats
    random init."""
    [result] = run_notebooks(["01_pretrain_tiny_clip"], "smoke", {"eval_categories": ["weave"]},
                             results_root=tmp_path, progress=False)
    assert result.ok, result.error
    for figure in ("01_corpus_samples", "01_pretraining_loss", "01_pretraining_zero_shot"):
        assert (tmp_path / "figures" / f"{figure}.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "tables" / "01_zero_shot_tiny_clip.csv").set_index(["weights", "method"])
    assert table.loc[("clipad-synthetic", "winclip"), "image_auroc"] > table.loc[("random init", "winclip"), "image_auroc"]


def test_the_terminal_shows_the_whole_message_of_the_failing_cell(tmp_path, monkeypatch, capsys):
    # A dataset copy that does not match its manifest: the list of problems reaches the terminal,
    # not only "see the problems above" inside the executed notebook.
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):  # one category with one normal image per split: it loads, but is not MVTec AD
        folder = tmp_path / "data" / "mvtec_anomaly_detection" / "bottle" / split / "good"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "000.png")
    monkeypatch.setenv("CLIPAD_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CLIPAD_RESULTS", str(tmp_path / "results"))
    assert cli.main(["run", "00", "-p", "dataset=mvtec", "-p", "seeds=[0]", "-p", "categories=[bottle]"]) == 1
    out = capsys.readouterr().out
    assert "does not match its manifest:" in out
    assert "category 'bottle': found 1 normal and 0 anomalous test images, expected 20 and 63" in out
    assert "category 'cable' is missing" not in out  # not selected: a partial copy may lack it
    assert "00_data_and_metrics.failed.ipynb" in out


def test_an_executed_notebook_is_signed_and_opens_trusted_with_its_widget_state(tmp_path, monkeypatch):
    # A fresh Jupyter contents manager (what JupyterLab's server uses) marks the cells trusted
    # without `jupyter trust`, and the widget's state is saved in the notebook for its saved view.
    from jupyter_server.services.contents.filemanager import FileContentsManager
    from nbformat.sign import NotebookNotary

    from clipad_lib.runner import execute_notebook

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))  # a fresh notary secret and store
    notebook = new_notebook(cells=[new_code_cell("value = 3", metadata={"tags": ["parameters"]}),
                                   new_code_cell("import ipywidgets\nipywidgets.IntSlider(value=value)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "widget.ipynb")
    result = execute_notebook(tmp_path / "widget.ipynb", {"value": 5}, tmp_path / "out", progress=False)
    assert result.ok, result.error
    executed = nbformat.read(result.output, as_version=4)
    state = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert any(model["state"].get("value") == 5 for model in state.values())
    assert NotebookNotary(data_dir=str(tmp_path / "jupyter-data")).check_signature(executed)
    opened = FileContentsManager(root_dir=str(tmp_path / "out")).get("widget.ipynb")["content"]
    assert all(cell["metadata"].get("trusted") for cell in opened["cells"] if cell["cell_type"] == "code")
    # An unsigned copy is not trusted: the signature is what makes the difference.
    nbformat.write(executed, tmp_path / "out" / "copy.ipynb")
    (tmp_path / "out" / "copy.ipynb").write_text((tmp_path / "out" / "copy.ipynb").read_text().replace('"value": 5', '"value": 6'))
    copied = FileContentsManager(root_dir=str(tmp_path / "out")).get("copy.ipynb")["content"]
    assert not all(cell["metadata"].get("trusted") for cell in copied["cells"] if cell["cell_type"] == "code")


def test_a_good_run_is_exported_to_html_with_its_widget_state(tmp_path):
    notebook = new_notebook(cells=[new_code_cell("x = 3", metadata={"tags": ["parameters"]}),
                                   new_code_cell("import ipywidgets\nipywidgets.IntSlider(x, description='chosen')")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "widget.ipynb")
    [result] = run_notebooks([str(tmp_path / "widget.ipynb")], "smoke", {"x": 7}, results_root=tmp_path / "out",
                             progress=False)
    assert result.ok, result.error
    executed = nbformat.read(tmp_path / "out" / "widget.ipynb", as_version=4)
    state = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    [slider] = [model for model in state.values() if model["model_name"] == "IntSliderModel"]
    assert slider["state"]["value"] == 7 and slider["state"]["description"] == "chosen"
    page = (tmp_path / "out" / "widget.html").read_text()
    assert 'type="application/vnd.jupyter.widget-state+json"' in page and "IntSliderModel" in page
    assert 'type="application/vnd.jupyter.widget-view+json"' in page
