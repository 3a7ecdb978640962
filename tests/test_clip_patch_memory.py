import numpy as np
import pytest
import torch

from clipad_lib.data.transforms import ImageTransform
from clipad_lib.engine import evaluate_detector, fit_few_shot, run_few_shot
from clipad_lib.methods import FitData, CLIPPatchMemoryConfig, CLIPPatchMemoryDetector
from clipad_lib.methods.memory_bank import approximate_greedy_coreset, nearest_distances

SMOKE = dict(backbone="clipad-tiny-ViT", pretrained=None, image_size=128, layers=(2, 4, 6, 8))


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return CLIPPatchMemoryDetector(CLIPPatchMemoryConfig(**SMOKE))


def test_predict_shapes_and_zero_score_on_a_reference(detector):
    references = torch.randn(2, 3, 128, 128)
    detector.fit(FitData(reference_images=references))
    prediction = detector.predict(references[:1])
    assert prediction.image_scores.shape == (1,) and prediction.anomaly_maps.shape == (1, 128, 128)
    assert prediction.image_scores[0] == pytest.approx(0.0, abs=1e-5)  # its own patches are in memory
    other = detector.predict(torch.randn(1, 3, 128, 128))
    assert other.image_scores[0] > 0.01


def test_beats_chance_on_the_synthetic_dataset(detector, synthetic_train, synthetic_test, synthetic_root, tmp_path):
    run = run_few_shot(detector, train=synthetic_train, test=synthetic_test, root=synthetic_root, k=4, seeds=[0],
                       results_dir=tmp_path)
    image_auroc = np.mean([r.metrics["image_auroc"] for r in run.records])
    pixel_auroc = np.mean([r.metrics["pixel_auroc"] for r in run.records])
    assert len(run.records) == 8
    assert image_auroc > 0.70 and pixel_auroc > 0.80, (image_auroc, pixel_auroc)


def test_same_seed_same_maps(detector, synthetic_train, synthetic_test):
    pill = synthetic_test.subset(category="pill")
    fit_few_shot(detector, synthetic_train, "pill", 2, seed=3)
    first = evaluate_detector(detector, pill, progress=False)
    fit_few_shot(detector, synthetic_train, "pill", 2, seed=3)
    second = evaluate_detector(detector, pill, progress=False)
    np.testing.assert_array_equal(first.anomaly_maps, second.anomaly_maps)
    np.testing.assert_array_equal(first.image_scores, second.image_scores)
    assert first.protocol["aupro_variant"] == "mvtec" and first.protocol["resolution"] == 128


def test_coreset_picks_spread_out_points():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 10.0], [10.1, 0.0]])
    chosen = approximate_greedy_coreset(points, 3, projection_dim=128, seed=0)
    assert len(set(chosen.tolist())) == 3
    groups = {0: 0, 1: 0, 2: 1, 4: 1, 3: 2}
    assert {groups[i] for i in chosen.tolist()} == {0, 1, 2}


def test_coreset_shrinks_memory(tiny_backbone):
    detector = CLIPPatchMemoryDetector(CLIPPatchMemoryConfig(**{**SMOKE, "image_size": 64, "coreset_ratio": 0.25}),
                                 backbone=tiny_backbone)
    detector.fit(FitData(reference_images=torch.randn(2, 3, 64, 64)))
    assert all(len(bank) == 32 for bank in detector.memory)  # 2 images x 64 patches x 0.25


def test_misuse_fails_clearly(tiny_backbone):
    detector = CLIPPatchMemoryDetector(CLIPPatchMemoryConfig(**{**SMOKE, "image_size": 64}), backbone=tiny_backbone)
    with pytest.raises(RuntimeError, match="before fit"):
        detector.predict(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="reference_images"):
        detector.fit(FitData())
    with pytest.raises(ValueError, match="distance"):
        CLIPPatchMemoryConfig(distance="manhattan")
    with pytest.raises(ValueError, match="coreset_ratio"):
        CLIPPatchMemoryConfig(coreset_ratio=0)
    assert isinstance(detector.transform, ImageTransform) and detector.transform.size == 64


def test_nearest_distances_match_a_brute_force_search():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(7, 5, generator=generator), torch.randn(11, 5, generator=generator)
    brute = ((queries[:, None] - bank[None]) ** 2).sum(-1).sqrt().sort(dim=1).values
    torch.testing.assert_close(nearest_distances(queries, bank, k=3), brute[:, :3])
    torch.testing.assert_close(nearest_distances(queries, bank, k=2, squared=True), brute[:, :2] ** 2)
    assert nearest_distances(queries, bank, k=50).shape == (7, 11)  # k is clipped to the bank
    with pytest.raises(ValueError, match="channels"):
        nearest_distances(queries, torch.randn(3, 4))
    with pytest.raises(ValueError, match="coreset of 9 rows"):
        approximate_greedy_coreset(bank[:4], 9)
