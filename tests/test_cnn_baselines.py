"""PatchCore, PaDiM and SPADE on a timm ResNet: the backbone, each method's numbers on known inputs,
learning on the synthetic data, full-shot runs, and errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from scipy.spatial.distance import mahalanobis

from clipad_lib.backbones import BackboneError, CheckpointError
from clipad_lib.backbones.timm_cnn import build_cnn_backbone
from clipad_lib.data import FULL_SHOT, DatasetError, sample_k_shot
from clipad_lib.engine import evaluate_detector, fit_few_shot
from clipad_lib.methods import (FitData, PaDiMConfig, PaDiMDetector, PatchCoreConfig, PatchCoreDetector, SPADEConfig,
                                SPADEDetector)

SMALL = {"backbone": "resnet18", "pretrained": None, "image_size": 64}


@pytest.fixture(scope="module")
def resnet():
    return build_cnn_backbone("resnet18", None, 64)


def _images(count, seed=0, size=64):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_backbone_gives_each_stage_at_its_stride(resnet):
    maps = resnet.stage_features(_images(2), (3, 1, 2))
    assert [tuple(m.shape) for m in maps] == [(2, 256, 4, 4), (2, 64, 16, 16), (2, 128, 8, 8)]
    assert resnet.channels == {1: 64, 2: 128, 3: 256, 4: 512} and resnet.grid(1) == 16
    assert resnet.pooled(_images(2)).shape == (2, 512)
    assert resnet.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(BackboneError, match="takes 64x64 images"):
        resnet.stage_features(_images(1, size=96), (1,))
    with pytest.raises(BackboneError, match="layers 1..4"):
        resnet.stage_features(_images(1), (5,))


def test_backbone_loads_a_local_torchvision_style_checkpoint_and_names_bad_ones(tmp_path, resnet, monkeypatch):
    other = build_cnn_backbone("resnet18", None, 64, init_seed=7)
    path = tmp_path / "resnet18.pth"
    torch.save(other.model.state_dict(), path)  # conv1, bn1, layer1.0.conv1, ..., fc: torchvision's keys
    loaded = build_cnn_backbone("resnet18", str(path), 64)
    images = _images(1)
    torch.testing.assert_close(loaded.stage_features(images, (2,))[0], other.stage_features(images, (2,))[0])
    assert not torch.equal(loaded.stage_features(images, (2,))[0], resnet.stage_features(images, (2,))[0])
    state = other.model.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="'layer1.0.conv1.weight' has shape"):
        build_cnn_backbone("resnet18", str(tmp_path / "bad.pth"), 64)
    create_model = timm.create_model

    def offline(name, pretrained=False, **kwargs):  # as timm fails without network or cached weights
        if pretrained:
            raise RuntimeError("cannot reach the Hugging Face hub")
        return create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneError, match="could not load resnet18.tv_in1k weights: cannot reach.*local checkpoint"):
        build_cnn_backbone("resnet18", "tv_in1k", 64)
    monkeypatch.undo()
    with pytest.raises(BackboneError, match="neither a local checkpoint file .* nor a timm pretrained tag of resnet18"):
        build_cnn_backbone("resnet18", "imagenet-please", 64)
    with pytest.raises(BackboneError, match="read ResNet stages"):
        build_cnn_backbone("vit_small_patch14_dinov2", None, 64)
    with pytest.raises(BackboneError, match="multiple of it"):
        build_cnn_backbone("resnet18", None, 48)


def test_patchcore_features_pool_each_neighbourhood_then_the_layers(resnet):
    detector = PatchCoreDetector(PatchCoreConfig(**SMALL, pretrain_embed_dim=64, target_embed_dim=32), resnet)
    images = _images(2)
    features = detector.patch_features(images)
    assert features.shape == (2, 8, 8, 32)  # layer2's grid at 64 px
    # Spelled out for one patch: the 3x3 zero-padded neighbourhood of layer2 at (3, 5), flattened
    # (channel, row, column); layer3's unfolded map resized to layer2's grid; pooled per layer, then together.
    layer2, layer3 = resnet.stage_features(images, (2, 3))
    neighbourhood = F.pad(layer2, (1, 1, 1, 1))[0, :, 3:6, 5:8].reshape(1, 1, -1)
    unfolded3 = F.unfold(layer3, 3, padding=1).reshape(2, -1, 4, 4)
    resized3 = F.interpolate(unfolded3, size=(8, 8), mode="bilinear", align_corners=False)[0, :, 3, 5]
    per_layer = [F.adaptive_avg_pool1d(neighbourhood, 64), F.adaptive_avg_pool1d(resized3.reshape(1, 1, -1), 64)]
    expected = F.adaptive_avg_pool1d(torch.cat(per_layer, dim=-1), 32).flatten()
    torch.testing.assert_close(features[0, 3, 5], expected)


def test_patchcore_scores_a_remembered_image_zero_and_keeps_its_coreset_share(resnet):
    references = _images(3)
    full = PatchCoreDetector(PatchCoreConfig(**SMALL, coreset_ratio=1.0), resnet).fit(FitData(references))
    assert len(full.memory) == 3 * 64
    remembered = full.patch_scores(references[:1])
    assert remembered.abs().max() < 1e-3  # every patch is in the memory: squared distance 0
    prediction = full.predict(torch.cat([references[:1], _images(1, seed=9)]))
    assert prediction.anomaly_maps.shape == (2, 64, 64) and prediction.image_scores[0] < prediction.image_scores[1]
    sampled = PatchCoreDetector(PatchCoreConfig(**SMALL), resnet).fit(FitData(references))
    assert len(sampled.memory) == int(3 * 64 * 0.1)
    again = PatchCoreDetector(PatchCoreConfig(**SMALL), resnet).fit(FitData(references))
    torch.testing.assert_close(sampled.memory, again.memory, rtol=0, atol=0)  # one seed, one coreset


def test_padim_is_the_mahalanobis_distance_of_the_reference_code(resnet):
    config = PaDiMConfig(**SMALL, feature_dims=20)
    detector = PaDiMDetector(config, resnet)
    assert detector.selected.tolist() == random.Random(1024).sample(range(64 + 128 + 256), 20)
    references, query = _images(5), _images(1, seed=3)
    detector.fit(FitData(references))
    train = detector.embeddings(references).double().numpy()  # [K, P, d]
    test = detector.embeddings(query).double().numpy()[0]
    distances = detector.distance_map(query).flatten()
    for position in (0, 37, 255):
        covariance = np.cov(train[:, position], rowvar=False) + 0.01 * np.eye(20)
        expected = mahalanobis(test[position], train[:, position].mean(axis=0), np.linalg.inv(covariance))
        assert float(distances[position]) == pytest.approx(expected, rel=1e-4)
    # layer2 and layer3 join layer1's grid by repeating each cell
    maps = resnet.stage_features(query, (1, 2, 3))
    joined = torch.cat([maps[0], maps[1].repeat_interleave(2, 2).repeat_interleave(2, 3),
                        maps[2].repeat_interleave(4, 2).repeat_interleave(4, 3)], dim=1)
    torch.testing.assert_close(detector.embeddings(query)[0], joined[0, detector.selected].flatten(1).T)


def test_padim_at_one_shot_is_a_scaled_euclidean_distance(resnet):
    detector = PaDiMDetector(PaDiMConfig(**SMALL, feature_dims=20), resnet)
    reference, query = _images(1), _images(1, seed=4)
    detector.fit(FitData(reference))
    expected = (detector.embeddings(query) - detector.embeddings(reference)).norm(dim=-1) / 0.01 ** 0.5
    torch.testing.assert_close(detector.distance_map(query).flatten(), expected.flatten(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="have 448 channels in all"):
        PaDiMDetector(PaDiMConfig(**SMALL, feature_dims=500), resnet)


def test_spade_image_score_is_the_mean_distance_to_the_nearest_images(resnet):
    references, queries = _images(4), _images(2, seed=5)
    detector = SPADEDetector(SPADEConfig(**SMALL, image_neighbours=2), resnet).fit(FitData(references))
    distances = torch.cdist(resnet.pooled(queries), resnet.pooled(references))
    expected = distances.sort(dim=1).values[:, :2].mean(dim=1)
    prediction = detector.predict(queries)
    torch.testing.assert_close(prediction.image_scores, expected)
    assert prediction.anomaly_maps.shape == (2, 64, 64)
    # A gallery of the 2 nearest images (searched per image) is a subset of all 4: never closer.
    narrow = SPADEDetector(SPADEConfig(**SMALL, gallery_images=2, gaussian_sigma=0.0), resnet).fit(FitData(references))
    wide = SPADEDetector(SPADEConfig(**SMALL, gaussian_sigma=0.0), resnet).fit(FitData(references))
    assert bool((narrow.predict(queries).anomaly_maps >= wide.predict(queries).anomaly_maps - 1e-5).all())
    assert float(wide.predict(references[:1]).anomaly_maps.abs().max()) < 1e-2  # remembered pixels: distance 0


@pytest.mark.parametrize("detector_type, config_type", [(PatchCoreDetector, PatchCoreConfig), (PaDiMDetector, PaDiMConfig),
                                                        (SPADEDetector, SPADEConfig)])
def test_each_finds_synthetic_defects_deterministically(detector_type, config_type, synthetic_train, synthetic_test):
    extra = {"feature_dims": 100} if config_type is PaDiMConfig else {}
    backbone = build_cnn_backbone("resnet18", None, 128)
    detector = detector_type(config_type(**{**SMALL, "image_size": 128, **extra}), backbone)
    washer = synthetic_test.subset(category="washer")
    fit_few_shot(detector, synthetic_train, "washer", 4, seed=0)
    first = evaluate_detector(detector, washer, progress=False)
    fit_few_shot(detector, synthetic_train, "washer", 4, seed=0)  # a second fit on the same draw
    images = torch.stack([detector.transform.image(washer[i].image) for i in range(4)])
    again = detector.predict(images)
    # (another batch size may round differently in the matrix products)
    np.testing.assert_allclose(first.image_scores[:4], again.image_scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.anomaly_maps[:4], again.anomaly_maps.numpy(), rtol=1e-5, atol=1e-6)
    # random-init ResNet-18 features still separate these defects from normal washers, well above chance
    assert first.metrics["image_auroc"] > 0.7 and first.metrics["pixel_auroc"] > 0.7


def test_full_shot_takes_every_normal_training_image(synthetic_train):
    normals = [r for r in synthetic_train.subset(category="pill").records if r.label == 0]
    chosen = sample_k_shot(synthetic_train, "pill", FULL_SHOT, seed=3)
    assert len(chosen) == len(normals) > 8 and {r.image_path for r in chosen} == {r.image_path for r in normals}
    assert sample_k_shot(synthetic_train, "pill", FULL_SHOT, 0) == sample_k_shot(synthetic_train, "pill", FULL_SHOT, 1)
    with pytest.raises(DatasetError, match="number of shots or 'full'"):
        sample_k_shot(synthetic_train, "pill", "all", 0)


def test_misuse_fails_clearly(resnet):
    for detector in (PatchCoreDetector(PatchCoreConfig(**SMALL), resnet), PaDiMDetector(PaDiMConfig(**SMALL, feature_dims=50), resnet),
                     SPADEDetector(SPADEConfig(**SMALL), resnet)):
        with pytest.raises(RuntimeError, match="before fit"):
            detector.predict(_images(1))
        with pytest.raises(ValueError, match="reference_images"):
            detector.fit(FitData())
    with pytest.raises(ValueError, match="patch_size"):
        PatchCoreConfig(patch_size=2)
    with pytest.raises(ValueError, match="stages"):
        PaDiMConfig(stages=(2, 1))
    with pytest.raises(ValueError, match="shared backbone is resnet18 at 64 px"):
        PatchCoreDetector(PatchCoreConfig(**{**SMALL, "image_size": 128}), resnet)
