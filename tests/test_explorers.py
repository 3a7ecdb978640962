"""The interactive explorers (clipad_lib.viz.explorers) driven from Python: points, caching,
clicks and hovers as the browser sends them, thresholds, the run browser's worst samples; and the
per-image scores run records keep for it. tests/test_browser.py drives the same widgets in Chromium."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipad_lib.results import RunOutcome, RunSpec, load_records, sample_columns
from clipad_lib.viz import explorers
from clipad_lib.viz.explorers import (EmbeddingPoints, embedding_explorer, image_points, method_explorer, patch_points,
                                      run_browser, text_points, worst_samples)

RNG = np.random.default_rng(0)
B, N, D, S = 4, 16, 6, 32  # 4 images, a 4 x 4 patch grid, 32 px


@pytest.fixture()
def pictures():
    images = RNG.random((B, S, S, 3))
    masks = np.zeros((B, S, S), dtype=bool)
    masks[1, :8, :8] = True  # image 1: the top-left patch (0, 0) is anomalous
    maps = RNG.random((B, S, S)).astype(np.float32)
    return images, masks, maps


@pytest.fixture()
def patches(pictures):
    images, masks, maps = pictures
    return patch_points({2: RNG.normal(size=(B, N, D)), 4: RNG.normal(size=(B, N, D + 2))}, images, masks, maps,
                        dataset="syn", categories=["a", "a", "b", "b"], defects=["good", "crack", "good", "hole"])


def _send(mark, event: str, index: int) -> None:
    """What the browser sends when a point is clicked or hovered (bqplot's custom message)."""
    mark._handle_custom_msgs(None, {"event": event, "data": {"index": index}})


# -- points -----------------------------------------------------------------------------------

def test_patch_points_label_each_patch_and_name_it(patches):
    assert len(patches) == B * N and list(patches.features) == ["layer 2", "layer 4"]
    assert patches.features["layer 4"].shape == (B * N, D + 2)
    table = patches.table
    assert table["label"].sum() == 1 and table.index[table["label"] == 1].tolist() == [N]  # image 1, patch 0
    assert patches.describe(N) == "syn/a · crack · image 1, patch (0, 0) · anomalous patch"
    assert patches.describe(2 * N + 5) == "syn/b · good · image 2, patch (1, 1) · normal patch"


def test_combine_offsets_images_and_keeps_text_points_pictureless(pictures):
    images, masks, maps = pictures
    first = image_points({"clip": RNG.normal(size=(2, D))}, [0, 1], images[:2], masks[:2], maps[:2], categories="a")
    second = image_points({"clip": RNG.normal(size=(2, D))}, [1, 0], images[2:], masks[2:], maps[2:], categories="b")
    prompts = text_points({"clip": RNG.normal(size=(2, D))}, ["a flawless a", "a damaged a"], [0, 1], categories="a")
    joint = EmbeddingPoints.combine(first, second, prompts)
    assert joint.table["image"].tolist() == [0, 1, 2, 3, -1, -1]
    assert np.array_equal(joint.images, images) and np.array_equal(joint.maps, maps)
    assert joint.describe(5) == "a · anomalous prompt: “a damaged a”"
    with pytest.raises(ValueError, match="same feature sets"):
        EmbeddingPoints.combine(first, text_points({"other": RNG.normal(size=(1, D))}, ["x"], [0]))
    no_maps = image_points({"clip": RNG.normal(size=(2, D))}, [0, 1], images[:2], masks[:2])
    with pytest.raises(ValueError, match="maps for all of them"):
        EmbeddingPoints.combine(first, no_maps)
    with pytest.raises(ValueError, match=r"masks must have one entry per image \(0 images\), got 2"):
        image_points({"clip": RNG.normal(size=(2, D))}, [0, 1], masks=masks[:2])
    numbered = image_points({"clip": RNG.normal(size=(2, D))}, [0, 1], categories=[7, 8])
    assert numbered.table["category"].tolist() == ["7", "8"]  # as the category control offers them


def test_bad_points_are_refused_with_the_expected_shape(pictures):
    images, masks, maps = pictures
    with pytest.raises(ValueError, match=r"\[B, N, D\] with B = 4 images and N a square grid"):
        patch_points({2: RNG.normal(size=(B, 15, D))}, images, masks)
    with pytest.raises(ValueError, match=r"masks must be \[B, S, S\] with B = 4"):
        patch_points({2: RNG.normal(size=(B, N, D))}, images, masks[:3])
    with pytest.raises(ValueError, match="categories must have 4 entries"):
        image_points({"f": RNG.normal(size=(B, D))}, [0, 1, 0, 1], categories=["a", "b"])
    with pytest.raises(ValueError, match=r"features\['f'\] must be \[P, D\] with P = 4"):
        image_points({"f": RNG.normal(size=(3, D))}, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="refer to image 3 but 2 images"):
        EmbeddingPoints({"f": np.zeros((4, 2))}, pd.DataFrame({"dataset": "", "category": "", "label": 0,
                                                               "defect": "", "image": [0, 1, 2, 3], "patch": -1,
                                                               "grid": 0, "text": ""}), images[:2])


# -- the embedding explorer -------------------------------------------------------------------

def test_projections_are_cached_per_view_and_recolouring_computes_none(patches, monkeypatch):
    calls = []
    real = explorers.project_points

    def counted(features, method="pca", seed=0, perplexity=30):
        calls.append((method, len(features)))
        return real(features, method, seed=seed, perplexity=perplexity)

    monkeypatch.setattr(explorers, "project_points", counted)
    explorer = embedding_explorer(patches)
    controls = explorer.controls
    assert calls == [("pca", B * N)] and len(explorer.scatter.x) == B * N
    assert controls["category"].options == ("all", "a", "b") and controls["perplexity"].disabled

    controls["colour"].value = "defect"  # restyles the drawn points, projects nothing
    assert len(calls) == 1 and len(set(explorer.scatter.colors)) == 3 and "hole" in explorer.legend.value
    controls["category"].value = "b"  # a filter is a new view: only category b's patches
    assert calls[-1] == ("pca", 2 * N) and set(patches.table["category"][explorer.shown]) == {"b"}
    controls["features"].value = "layer 4"
    controls["features"].value = "layer 2"  # back to a seen view: cached
    assert len(calls) == 3
    controls["perplexity"].value = 5  # PCA does not use it
    assert len(calls) == 3
    controls["projection"].value = "tsne"
    assert calls[-1] == ("tsne", 2 * N) and not controls["perplexity"].disabled
    controls["perplexity"].value = 7
    controls["perplexity"].value = 5
    assert len(calls) == 5 and ("", "syn", "b", "layer 2", "tsne", 7) in explorer.projections


def test_a_click_pins_the_clicked_sample_and_a_hover_names_it(patches):
    explorer = embedding_explorer(patches)
    scatter = explorer.controls["scatter"]
    assert explorer.pinned is None and explorer.controls["picture"].value == b""
    _send(scatter, "hover", N)
    assert explorer.controls["hovered"].value == "hover: syn/a · crack · image 1, patch (0, 0) · anomalous patch"
    thumbnail = explorer.controls["hover_picture"].value
    assert thumbnail[:4] == b"\x89PNG" and thumbnail == explorer.thumbnail(N)
    assert explorer.thumbnail(N) != explorer.thumbnail(N + 1)  # another patch outlined
    assert explorer.scatter.names[N] == patches.describe(N)  # the tooltip says the same
    _send(scatter, "element_click", N)
    assert explorer.pinned == N and scatter.selected == [N]
    assert "image 1, patch (0, 0)" in explorer.controls["pinned"].value
    first = explorer.controls["picture"].value
    assert first[:4] == b"\x89PNG"
    explorer.controls["category"].value = "a"  # the pinned point is still drawn: it stays pinned and selected
    assert explorer.pinned == N and scatter.selected == [N] and explorer.controls["picture"].value == first
    explorer.controls["category"].value = "b"  # not drawn any more: unpinned
    assert explorer.pinned is None and scatter.selected is None and explorer.controls["picture"].value == b""
    _send(scatter, "hover", 5)  # drawn point i is now table row shown[i]
    assert explorer.controls["hovered"].value == f"hover: {patches.describe(2 * N + 5)}"
    _send(scatter, "element_click", 5)
    assert explorer.pinned == explorer.shown[5] == 2 * N + 5 and explorer.controls["picture"].value != first
    assert "image 2, patch (1, 1)" in explorer.controls["pinned"].value
    explorer.controls["projection"].value = "tsne"  # a new projection of the same points keeps the pin
    assert explorer.pinned == 2 * N + 5 and scatter.selected == [5]
    with pytest.raises(IndexError, match="32 points are"):
        explorer.pin(40)


def test_a_large_view_draws_a_seeded_sample(patches):
    explorer = embedding_explorer(patches, max_points=20)
    assert len(explorer.shown) == 20 and len(set(explorer.shown)) == 20 and len(explorer.scatter.x) == 20
    assert "20 of 64 points (a seeded sample" in explorer.status.value
    again = embedding_explorer(patches, max_points=20)
    assert np.array_equal(again.shown, explorer.shown)  # the same seed draws the same sample
    assert np.array_equal(explorer.scatter.names, [patches.describe(r) for r in explorer.shown])
    explorer.controls["category"].value = "a"  # 32 chosen, 20 drawn, all of category a
    assert len(explorer.shown) == 20 and set(patches.table["category"][explorer.shown]) == {"a"}
    assert len(embedding_explorer(patches, max_points=None).shown) == B * N
    with pytest.raises(ValueError, match="max_points must be an int >= 2 or None"):
        embedding_explorer(patches, max_points=1)
    assert patches.names() == [patches.describe(r) for r in range(len(patches))]


def test_text_points_pin_their_prompt_and_sets_switch_spaces(pictures):
    images, masks, maps = pictures
    joint = EmbeddingPoints.combine(
        image_points({"clip": RNG.normal(size=(B, D))}, [0, 1, 0, 1], images, masks, maps, categories="a"),
        text_points({"clip": RNG.normal(size=(2, D))}, ["a photo of a flawless a", "a photo of a damaged a"], [0, 1],
                    categories="a"))
    other = image_points({"adapted": RNG.normal(size=(B, 3))}, [0, 1, 0, 1], images, masks, maps)
    explorer = embedding_explorer({"CLIP": joint, "adapted": other}, colour_by="label")
    assert explorer.set_choice.layout.display == ""  # two sets: the control shows
    row = explorer.pin(B + 1)
    assert row == B + 1 and "damaged" in explorer.controls["pinned"].value and explorer.controls["picture"].value == b""
    assert explorer.thumbnail(B + 1) == b"" and explorer.thumbnail(0)[:4] == b"\x89PNG"
    explorer.controls["set"].value = "adapted"
    assert explorer.controls["features"].value == "adapted" and len(explorer.shown) == B
    assert explorer.scatter.colors == ["#1f77b4", "#d62728", "#1f77b4", "#d62728"]
    figure = explorer.static_figure()
    assert figure.axes[0].get_title() == "adapted · PCA"
    with pytest.raises(ValueError, match="colour_by must be one of"):
        embedding_explorer(joint, colour_by="size")
    with pytest.raises(ValueError, match="projection must be one of"):
        embedding_explorer(joint, projection="isomap")


# -- anomaly maps across methods --------------------------------------------------------------

def test_method_explorer_steps_thresholds_and_scales_each_method(pictures):
    images, masks, maps = pictures
    explorer = method_explorer(images, masks, {"A": maps, "B": 10 * maps + 3}, {"A": np.arange(4.0), "B": np.ones(4)})
    assert np.allclose(explorer.maps["A"], explorer.maps["B"], atol=1e-6)  # min-max scaled: one threshold for both
    assert explorer.maps["A"].min() == 0 and explorer.maps["A"].max() == 1
    controls = explorer.controls
    first = controls["picture"].value
    explorer.step(1)
    assert controls["sample"].value == 1 and controls["picture"].value != first
    explorer.step(-2)  # wraps around
    assert controls["sample"].value == 3
    shown = controls["picture"].value
    controls["threshold"].value = 0.9
    assert controls["picture"].value != shown
    with pytest.raises(ValueError, match=r"maps\['B'\] must be \[N, S, S\]"):
        method_explorer(images, masks, {"A": maps, "B": maps[:, :8]})
    with pytest.raises(ValueError, match="scores must name the same methods"):
        method_explorer(images, masks, {"A": maps}, {"B": np.ones(4)})
    with pytest.raises(ValueError, match="scores\\['A'\\] has 3 values for 4 samples"):
        method_explorer(images, masks, {"A": maps}, {"A": np.ones(3)})


# -- the run browser --------------------------------------------------------------------------

def test_worst_samples_by_hand():
    samples = {"label": [0, 0, 1, 1, 0, 1], "score": [0.2, 0.9, 0.1, 0.8, 0.5, 0.3]}
    assert worst_samples(samples, 2) == ([1, 4], [2, 5])  # normals scored highest; anomalous scored lowest
    assert worst_samples(samples, 9) == ([1, 4, 0], [2, 5, 3])
    with pytest.raises(ValueError, match="3 scores and 2 labels"):
        worst_samples({"label": [0, 1], "score": [1, 2, 3]})


def _write_image(path, value: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def _record(tmp_path, method: str, category: str, seed: int, auroc: float, with_samples: bool = True):
    from clipad_lib.data.sample import SampleRecord

    root = tmp_path / "data"
    records = []
    for i, label in enumerate((0, 0, 1)):
        image = root / category / f"{i}.png"
        _write_image(image, 40 * i)
        mask = None
        if label:
            mask = root / category / f"{i}_mask.png"
            Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), 6)).save(mask)
        records.append(SampleRecord(image, mask, label, category, "crack" if label else "good", "test"))
    samples = sample_columns(records, [0.1 * seed, 0.7, 0.2], root) if with_samples else {}
    spec = RunSpec(method=method, setting="zero-shot", dataset="syn", category=category, seed=seed, config={},
                   protocol={})
    spec.write(tmp_path / "results", RunOutcome({"image_auroc": auroc, "pixel_auroc": None}, {"predict_s": 1.0},
                                                samples))
    return root


def test_run_browser_shows_a_cell_its_record_and_its_worst_samples(tmp_path):
    root = _record(tmp_path, "winclip", "pill", 0, 0.5)
    _record(tmp_path, "winclip", "pill", 1, 1.0)
    _record(tmp_path, "patchcore", "pill", 0, 0.25)
    _record(tmp_path, "patchcore", "weave", 0, 0.75, with_samples=False)
    records = load_records(tmp_path / "results")
    by_run = {(r.method, r.category, r.seed): r for r in records}
    assert by_run["patchcore", "weave", 0].samples == {} and by_run["winclip", "pill", 1].samples["score"] == [0.1, 0.7, 0.2]
    assert by_run["winclip", "pill", 0].samples["image"][2] == "pill/2.png"
    assert by_run["winclip", "pill", 0].samples["mask"] == [None, None, "pill/2_mask.png"]
    browser = run_browser(records, {"syn": root})
    assert sorted(browser.cells) == [("patchcore-zero-shot", "syn", "pill"), ("patchcore-zero-shot", "syn", "weave"),
                                     ("winclip-zero-shot", "syn", "pill")]
    assert browser.cells[("winclip-zero-shot", "syn", "pill")].description == "75.0"  # mean of the two seeds
    browser.select("winclip-zero-shot", "syn", "pill")
    assert list(browser.seed.options) == [0, 1] and "winclip" in browser.details.value
    assert browser.picture.value[:4] == b"\x89PNG" and "3 test images" in browser.note.value
    first = browser.picture.value
    browser.seed.value = 1
    assert browser.record.seed == 1 and browser.picture.value != first
    browser.select("patchcore-zero-shot", "syn", "weave")
    assert "predates them" in browser.note.value and browser.picture.value == b""
    moved = run_browser(records, {"syn": tmp_path / "nowhere"})
    assert "cannot show the worst samples" in moved.note.value and "not found" in moved.note.value
    with pytest.raises(ValueError, match="no record has the metric 'aupro'"):
        run_browser(records, {"syn": root}, metric="aupro")
    with pytest.raises(ValueError, match="at least one run record"):
        run_browser([], {"syn": root})
    with pytest.raises(KeyError, match="no record of winclip-zero-shot on syn/weave"):
        browser.select("winclip-zero-shot", "syn", "weave")


def test_run_browser_shows_one_dataset_at_a_time(tmp_path):
    root = _record(tmp_path, "winclip", "pill", 0, 0.5)
    spec = RunSpec(method="winclip", setting="zero-shot", dataset="other", category="cable", seed=0, config={},
                   protocol={})
    spec.write(tmp_path / "results", RunOutcome({"image_auroc": 0.9}, {}))
    browser = run_browser(load_records(tmp_path / "results"), {"syn": root, "other": root})
    assert browser.dataset.options == ("other", "syn") and list(browser.cells) == [("winclip-zero-shot", "other", "cable")]
    browser.dataset.value = "syn"  # that dataset's table, its first cell shown
    assert list(browser.cells) == [("winclip-zero-shot", "syn", "pill")] and browser.record.dataset == "syn"
    browser.select("winclip-zero-shot", "other", "cable")  # a cell of another dataset switches the table
    assert browser.dataset.value == "other" and browser.record.category == "cable"
    assert browser.cells[("winclip-zero-shot", "other", "cable")].button_style == "info"


def test_sample_columns_refuse_a_length_mismatch(tmp_path):
    from clipad_lib.data.sample import SampleRecord

    record = SampleRecord(tmp_path / "a.png", None, 0, "c", "good", "test")
    with pytest.raises(ValueError, match="got 2 scores for 1 samples"):
        sample_columns([record], [0.1, 0.2], tmp_path)
