import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipad_lib.data import (
    DatasetError,
    SyntheticSpec,
    ensure_synthetic_dataset,
    list_manifests,
    load_dataset,
    load_manifest,
    load_sample,
    read_k_shot_list,
    sample_k_shot,
    verify_dataset,
    write_k_shot_list,
)
from clipad_lib.data.readers import read_meta_json, read_mvtec, read_visa_csv
from clipad_lib.data.synthetic import CATEGORIES, _apply_defect, _normal_image, _to_uint8, defects_of

PAPER_DATASETS = {"mvtec", "visa", "mpdd", "btad", "ksdd", "ksdd2", "dagm", "dtd", "headct", "brainmri", "br35h",
                  "isic", "clinicdb", "colondb", "tn3k", "endo", "kvasir", "resc"}


def test_every_paper_dataset_has_a_complete_manifest():
    assert PAPER_DATASETS | {"synthetic"} == set(list_manifests())
    for name in PAPER_DATASETS:
        manifest = load_manifest(name)
        assert manifest.homepage and manifest.license and manifest.citation and manifest.download_hint
        assert manifest.categories
        known = [c for c in manifest.categories.values() if c is not None]
        if manifest.test_counts and len(known) == len(manifest.categories):
            assert sum(c.normal for c in known) == manifest.test_counts.normal
            assert sum(c.anomalous for c in known) == manifest.test_counts.anomalous


def test_manifest_totals_follow_the_papers():
    assert load_manifest("mvtec").test_counts.anomalous == 1258  # AdaCLIP supp. Tab. 1
    assert load_manifest("visa").categories["pcb4"].normal == 101
    assert load_manifest("ksdd2").test_counts.normal == 894  # DLVP-CLIP supp. C
    assert load_manifest("br35h").label_levels == ("image",)
    assert load_manifest("clinicdb").label_levels == ("pixel",)


def test_synthetic_dataset_passes_verification(synthetic_root):
    report = verify_dataset("synthetic", synthetic_root, deep=True)
    assert report.ok, report.format()
    assert len(load_manifest("synthetic").categories) >= 8


def test_synthetic_generation_is_deterministic(tmp_path, synthetic_root):
    spec = SyntheticSpec(image_size=32, train_normal=2, test_normal=1, test_per_defect=1)
    first = ensure_synthetic_dataset(seed=7, spec=spec, root=tmp_path / "a")
    second = ensure_synthetic_dataset(seed=7, spec=spec, root=tmp_path / "b")
    other = ensure_synthetic_dataset(seed=8, spec=spec, root=tmp_path / "c")
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.png"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert any((first / f).read_bytes() != (other / f).read_bytes() for f in files)


@pytest.mark.parametrize("category", CATEGORIES)
def test_synthetic_defects_change_exactly_the_masked_pixels(category):
    for defect in defects_of(category):
        rng = np.random.default_rng(11)
        image, footprint = _normal_image(category, rng, 64)
        defective, mask = _apply_defect(defect, image, footprint, 0.18, rng)
        changed = np.any(defective != _to_uint8(image), axis=-1)
        assert mask.sum() > 0, (category, defect)
        np.testing.assert_array_equal(changed, mask)


def test_mvtec_reader_pairs_masks_and_sorts(synthetic_root):
    records = read_mvtec(synthetic_root, "test", ["pill"])
    assert [str(r.image_path) for r in records] == sorted(str(r.image_path) for r in records)
    anomalous = [r for r in records if r.label == 1]
    assert anomalous and all(r.mask_path.name == r.image_path.stem + "_mask.png" for r in anomalous)
    assert all(r.mask_path is None and r.defect == "good" for r in records if r.label == 0)
    sample = load_sample(anomalous[0])
    assert sample.image.shape == (128, 128, 3) and sample.mask.dtype == bool and sample.mask.any()


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_visa_csv_reader(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    for name in ("a.png", "b.png", "c.png"):
        _write_png(tmp_path / "candle" / "Data" / "Images" / name, image)
    _write_png(tmp_path / "candle" / "Data" / "Masks" / "b.png", mask)
    (tmp_path / "split_csv").mkdir()
    with open(tmp_path / "split_csv" / "1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerow(["candle", "train", "normal", "candle/Data/Images/a.png", ""])
        writer.writerow(["candle", "test", "anomaly", "candle/Data/Images/b.png", "candle/Data/Masks/b.png"])
        writer.writerow(["candle", "test", "normal", "candle/Data/Images/c.png", ""])
    test = read_visa_csv(tmp_path, "test")
    assert [(r.image_path.name, r.label) for r in test] == [("b.png", 1), ("c.png", 0)]
    assert load_sample(test[0]).mask.sum() == 4
    assert len(read_visa_csv(tmp_path, "train")) == 1


def test_meta_json_reader(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    _write_png(tmp_path / "isic" / "img" / "1.png", image)
    _write_png(tmp_path / "isic" / "mask" / "1.png", np.full((8, 8), 255, np.uint8))
    meta = {"test": {"isic": [{"img_path": "isic/img/1.png", "mask_path": "isic/mask/1.png", "cls_name": "isic",
                               "specie_name": "lesion", "anomaly": 1}]}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    [record] = read_meta_json(tmp_path, "test")
    assert record.label == 1 and record.defect == "lesion" and record.mask_path.name == "1.png"
    with pytest.raises(DatasetError, match="no 'train' section"):
        read_meta_json(tmp_path, "train")
    (tmp_path / "meta.json").write_text('{"test": {"isic": [{"img_path": "x.png"}]}}')
    with pytest.raises(DatasetError, match="lacks the field 'anomaly'"):
        read_meta_json(tmp_path, "test")


@pytest.fixture
def copy_of_synthetic(tmp_path, synthetic_root):
    target = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, target)
    return target


def test_verify_reports_every_kind_of_mismatch(copy_of_synthetic):
    root = copy_of_synthetic
    shutil.rmtree(root / "weave")                                   # a missing category
    (root / "pill" / "test" / "good" / "000.png").unlink()          # a wrong count
    (root / "tile" / "test" / "hole" / "001.png").unlink()          # leaves a mask without image
    (root / "washer" / "ground_truth" / "scratch" / "002_mask.png").unlink()  # an image without mask
    report = verify_dataset("synthetic", root)
    text = "\n".join(report.problems)
    assert not report.ok
    assert "category 'weave' is missing" in text
    assert "category 'pill': found 9 normal" in text
    assert "mask(s) have no image" in text and "001_mask.png" in text
    assert "anomalous image(s) have no mask" in text and "002.png" in text


def test_an_anomalous_image_without_its_mask_is_refused_or_dropped_never_loaded_silently(copy_of_synthetic):
    root = copy_of_synthetic
    (root / "washer" / "ground_truth" / "scratch" / "002_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"1 anomalous image\(s\) of synthetic \(test\) have no mask") as error:
        load_dataset("synthetic", "test", root=root)
    assert "washer/test/scratch/002.png" in str(error.value) and 'unmasked="drop"' in str(error.value)
    complete = load_dataset("synthetic", "test", root=root, categories=["pill"])  # other categories are fine
    assert complete.dropped == []
    with pytest.warns(RuntimeWarning, match="leaving out 1 anomalous image"):
        dropped = load_dataset("synthetic", "test", root=root, unmasked="drop")
    assert [p.relative_to(root).as_posix() for p in dropped.dropped] == ["washer/test/scratch/002.png"]
    assert all(r.mask_path is not None for r in dropped.records if r.label == 1)
    assert len(dropped) == len(load_dataset("synthetic", "test")) - 1


def test_verify_names_manifest_and_download_hint_for_a_missing_root(tmp_path):
    report = verify_dataset("mvtec", tmp_path / "nowhere")
    assert not report.ok
    assert "mvtec.yaml" in report.problems[0] and "mvtec_anomaly_detection.tar.xz" in report.problems[0]


def test_missing_dataset_without_root_explains_clipad_data(monkeypatch):
    monkeypatch.delenv("CLIPAD_DATA", raising=False)
    with pytest.raises(DatasetError, match="CLIPAD_DATA is unset"):
        load_dataset("visa")


def test_corrupt_image_and_wrong_mask_size_name_the_file(copy_of_synthetic):
    root = copy_of_synthetic
    bad_image = root / "grain" / "test" / "good" / "003.png"
    bad_image.write_bytes(b"not a png")
    bad_mask = root / "pill" / "ground_truth" / "hole" / "000_mask.png"
    _write_png(bad_mask, np.zeros((10, 12), np.uint8))
    test = load_dataset("synthetic", root=root)
    grain = test.subset(category="grain")
    with pytest.raises(DatasetError, match="003.png"):
        grain[[r.image_path for r in grain.records].index(bad_image)]
    pill = test.subset(category="pill")
    with pytest.raises(DatasetError, match=r"000_mask.png is 12x10 .* its image is 128x128"):
        pill[[r.mask_path for r in pill.records].index(bad_mask)]
    report = verify_dataset("synthetic", root, deep=True)
    assert any("003.png" in p for p in report.problems) and any("000_mask.png" in p for p in report.problems)


def test_unknown_category_lists_the_known_ones(synthetic_test, synthetic_root):
    with pytest.raises(DatasetError, match="known categories: brushed, checker"):
        synthetic_test.subset(category="bottle")
    with pytest.raises(DatasetError, match="unknown categories"):
        load_dataset("synthetic", root=synthetic_root, categories=["bottle"])


def test_k_shot_is_seeded_per_category(synthetic_train, tmp_path):
    first = sample_k_shot(synthetic_train, "pill", 4, seed=0)
    assert first == sample_k_shot(synthetic_train, "pill", 4, seed=0)
    assert first != sample_k_shot(synthetic_train, "pill", 4, seed=1)
    assert len({r.image_path for r in first}) == 4 and all(r.label == 0 for r in first)
    # The draw for one category does not depend on which other categories are loaded.
    only_pill = synthetic_train.subset(category="pill")
    assert sample_k_shot(only_pill, "pill", 4, seed=0) == first
    root = first[0].image_path.parents[3]
    path = write_k_shot_list(tmp_path / "k.json", first, dataset="synthetic", category="pill", k=4, seed=0, root=root)
    assert read_k_shot_list(path, root) == [r.image_path for r in first]


def test_k_shot_bad_requests(synthetic_train, synthetic_test):
    with pytest.raises(DatasetError, match="k=21 but category 'pill' .* only 20"):
        sample_k_shot(synthetic_train, "pill", 21, seed=0)
    anomalous_only = synthetic_test.subset(category="pill", label=1)
    with pytest.raises(DatasetError, match="no normal training image"):
        sample_k_shot(anomalous_only, "pill", 1, seed=0)


def _generate(root: str) -> str:
    from clipad_lib.data import ensure_synthetic_dataset
    from clipad_lib.data.synthetic import SyntheticSpec

    return str(ensure_synthetic_dataset(spec=SyntheticSpec(image_size=32, train_normal=1, test_normal=1,
                                                           test_per_defect=1), root=Path(root)))


def test_parallel_jobs_generate_the_synthetic_set_once(tmp_path):
    # Batch jobs that start together all find one complete copy (a lock serialises generation).
    import multiprocessing

    root = tmp_path / "synthetic"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert pool.map(_generate, [str(root)] * 3) == [str(root)] * 3
    assert (root / "GENERATED.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthetic.lock", "synthetic"]  # no staging left


def _partial_mvtec_copy(root: Path, synthetic_root: Path, categories) -> None:
    """An MVTec-layout tree holding only ``categories``, with the manifest's test counts, drawn from
    the synthetic set's images and masks."""
    from clipad_lib.data import load_dataset, load_manifest

    manifest = load_manifest("mvtec")
    test = load_dataset("synthetic", "test", root=synthetic_root)
    normal = [r for r in test.records if r.label == 0]
    anomalous = [r for r in test.records if r.label == 1 and r.mask_path is not None]
    for category in categories:
        expected = manifest.categories[category]
        for split, records, count in (("train", normal, 3), ("test", normal, expected.normal)):
            folder = root / category / split / "good"
            folder.mkdir(parents=True)
            for i in range(count):
                shutil.copy(records[i % len(records)].image_path, folder / f"{i:03d}.png")
        images, masks = root / category / "test" / "crack", root / category / "ground_truth" / "crack"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for i in range(expected.anomalous):
            record = anomalous[i % len(anomalous)]
            shutil.copy(record.image_path, images / f"{i:03d}.png")
            shutil.copy(record.mask_path, masks / f"{i:03d}_mask.png")


def test_a_partial_copy_is_checked_for_what_the_run_reads(tmp_path, synthetic_root):
    root = tmp_path / "mvtec_anomaly_detection"
    _partial_mvtec_copy(root, synthetic_root, ["bottle", "cable"])
    # The whole manifest: 13 categories are missing.
    whole = verify_dataset("mvtec", root)
    assert not whole.ok and any("category 'zipper' is missing" in p for p in whole.problems)
    # The selected categories: they match exactly, the others may be absent (said once).
    chosen = verify_dataset("mvtec", root, categories=["bottle", "cable"])
    assert chosen.ok, chosen.problems
    assert chosen.notes == ["not on disk and not selected, so not checked: capsule, carpet, grid, hazelnut, leather, "
                            "metal_nut, pill, screw, tile, toothbrush, transistor, wood, zipper"]
    assert "note: not on disk and not selected" in chosen.format()
    # A selected category must still match its counts, and an absent one is missing.
    (root / "cable" / "test" / "good" / "000.png").unlink()
    broken = verify_dataset("mvtec", root, categories=["bottle", "cable", "pill"])
    assert "category 'pill' is missing: expected the folder" in " ".join(broken.problems)
    assert any("category 'cable': found 57 normal" in p for p in broken.problems)
    with pytest.raises(DatasetError, match="has no categories \\['bottel'\\]"):
        verify_dataset("mvtec", root, categories=["bottel"])
