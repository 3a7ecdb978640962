import numpy as np
import pytest
import torch

from clipad_lib.data import load_dataset, sample_k_shot
from clipad_lib.engine import evaluate_detector, load_reference_images
from clipad_lib.methods import FitData, WinCLIPConfig, WinCLIPDetector
from clipad_lib.methods.text_prompts import WINCLIP_ENSEMBLE
from clipad_lib.methods.winclip import harmonic_aggregation, window_indices


def test_window_indices_and_harmonic_aggregation_hand_computed():
    windows = window_indices(3, 2)
    assert windows.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25]])
    expected = torch.tensor([[[1.0, 2 / (1 + 4 / 3), 0.75],
                              [2 / (1 + 2), 4 / (1 + 4 / 3 + 2 + 4), 2 / (4 / 3 + 4)],
                              [0.5, 2 / (2 + 4), 0.25]]])
    torch.testing.assert_close(harmonic_aggregation(scores, windows, 3), expected)
    with pytest.raises(ValueError, match="exceeds"):
        window_indices(3, 4)


def test_prompt_counts_match_the_paper():
    assert len(WINCLIP_ENSEMBLE.sentences("pill")) == 154 + 88 and WINCLIP_ENSEMBLE.normal_count == 154


@pytest.fixture(scope="module")
def detector(tiny_backbone):
    return WinCLIPDetector(WinCLIPConfig(backbone="clipad-tiny-ViT", pretrained=None, image_size=64),
                           backbone=tiny_backbone)


def test_a_window_over_the_whole_grid_is_the_image_embedding(tiny_backbone):
    whole = WinCLIPDetector(WinCLIPConfig(backbone="clipad-tiny-ViT", pretrained=None, image_size=64, scales=(8,)),
                            backbone=tiny_backbone)
    images = torch.randn(2, 3, 64, 64)
    image_embedding, patch_tokens, windows = whole.encode(images)
    assert windows[0].shape == (2, 1, 32) and patch_tokens.shape == (2, 64, 64)
    torch.testing.assert_close(windows[0][:, 0], image_embedding, rtol=1e-4, atol=1e-5)


def test_zero_shot_shapes_and_ranges(detector):
    prediction = detector.predict(torch.randn(3, 3, 64, 64), ["pill", "pill", "tile"])
    assert prediction.image_scores.shape == (3,) and prediction.anomaly_maps.shape == (3, 64, 64)
    assert ((prediction.anomaly_maps >= 0) & (prediction.anomaly_maps <= 1)).all()
    with pytest.raises(ValueError, match="one class name per image"):
        detector.predict(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="WinCLIP\\+"):
        detector.fit(FitData())


def test_few_shot_beats_chance_on_synthetic(synthetic_root):
    detector = WinCLIPDetector(WinCLIPConfig(backbone="clipad-tiny-ViT", pretrained=None, image_size=128))
    train = load_dataset("synthetic", "train", root=synthetic_root)
    results = []
    for category in ["brushed", "checker", "grain", "hexnut", "pill", "tile", "washer", "weave"]:
        detector.fit(FitData(reference_images=load_reference_images(sample_k_shot(train, category, 4, 0),
                                                                    detector.transform)))
        test = load_dataset("synthetic", "test", root=synthetic_root, categories=[category])
        results.append(evaluate_detector(detector, test, batch_size=16, progress=False).metrics)
    # Measured: mean I-AUROC 0.793, P-AUROC 0.732 over the eight categories (4-shot, seed 0).
    assert np.mean([r["image_auroc"] for r in results]) > 0.72, results
    assert np.mean([r["pixel_auroc"] for r in results]) > 0.66, results


def test_every_method_uses_the_one_documented_transform(tiny_backbone):
    """Bicubic resize straight to the backbone's resolution (no crop), the backbone's own mean/std."""
    from clipad_lib.methods import AdaCLIPConfig, AdaCLIPDetector, AprilGANConfig, AprilGANDetector

    common = dict(backbone="clipad-tiny-ViT", pretrained=None, image_size=64)
    detectors = [
        WinCLIPDetector(WinCLIPConfig(**common), backbone=tiny_backbone),
        AprilGANDetector(AprilGANConfig(**common, quick_gelu=False, layers=(2, 4), few_shot_layers=(2, 4)),
                         backbone=tiny_backbone),
        AdaCLIPDetector(AdaCLIPConfig(**common, layers=(2, 4)), backbone=tiny_backbone),
    ]
    for detector in detectors:
        described = detector.transform.describe()
        assert described["size"] == 64 and described["interpolation"] == "bicubic", detector.name
        assert described["mask_interpolation"] == "nearest"
        assert described["mean"] == tiny_backbone.mean and described["std"] == tiny_backbone.std
