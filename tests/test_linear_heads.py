"""DINOv2 and SAM with linear heads (AdaCLIP supp. §3), on the tiny random-init timm models."""
from __future__ import annotations

import random

import numpy as np
import pytest
import timm
import torch

from clipad_lib.backbones import BackboneError, CheckpointError
from clipad_lib.data import load_dataset
from clipad_lib.data.auxiliary import ZeroShotViolation
from clipad_lib.data.transforms import ImageTransform
from clipad_lib.methods.base import FitData
from clipad_lib.backbones import build_timm_backbone
from clipad_lib.methods.linear_heads import DINOv2LinearHeads, LinearHeadsConfig, SAMLinearHeads, SAMLinearHeadsConfig
from clipad_lib.methods.registry import create_detector, method_entry
from clipad_lib.validation import ConfigError

SEEN = ["tile"]
UNSEEN = "pill"
DETECTORS = {"dinov2": DINOv2LinearHeads, "sam": SAMLinearHeads}


def smoke(name: str, **changes):
    return method_entry(name).smoke_config(**changes)


@pytest.fixture(scope="module")
def seen(synthetic_root):
    return load_dataset("synthetic", "test", root=synthetic_root, categories=SEEN)


@pytest.fixture(scope="module")
def unseen(synthetic_root):
    return load_dataset("synthetic", "test", root=synthetic_root, categories=[UNSEEN])


def _images(dataset, transform: ImageTransform, count: int = 3) -> torch.Tensor:
    return torch.stack([transform.image(dataset[i].image) for i in range(count)])


def _state():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_registry_entries_and_paper_defaults():
    dinov2, sam = method_entry("dinov2"), method_entry("sam")
    assert (dinov2.detector, dinov2.config, dinov2.fits_on) == (DINOv2LinearHeads, LinearHeadsConfig, ("auxiliary",))
    assert (sam.detector, sam.config, sam.fits_on) == (SAMLinearHeads, SAMLinearHeadsConfig, ("auxiliary",))
    assert "arXiv:2304.07193" in dinov2.paper and "arXiv:2304.02643" in sam.paper
    config = LinearHeadsConfig()
    assert (config.backbone, config.pretrained, config.image_size, config.layers) == \
        ("vit_small_patch14_dinov2", "lvd142m", 518, (3, 6, 9, 12))
    config = SAMLinearHeadsConfig()
    assert (config.backbone, config.pretrained, config.image_size, config.layers) == \
        ("samvit_large_patch16", "sa1b", 512, (6, 12, 18, 24))
    # each smoke model is the paper model's timm family
    assert smoke("sam").backbone.startswith("samvit_") and smoke("dinov2").backbone == "vit_small_patch14_dinov2"


@pytest.mark.parametrize("name", ["dinov2", "sam"])
def test_shapes_transform_and_frozen_backbone(name, unseen):
    detector = create_detector(name, smoke(name))
    assert isinstance(detector, DETECTORS[name]) and detector.name == name
    size = detector.config.image_size
    assert detector.transform == ImageTransform(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert detector.transform == ImageTransform.for_backbone(detector.backbone)
    assert not any(p.requires_grad for p in detector.backbone.parameters())
    detector.backbone.train()
    assert not detector.backbone.model.training  # stays in eval mode
    images = _images(unseen, detector.transform)
    tokens = detector.backbone.patch_tokens(images, (4, 1))
    assert [tuple(t.shape) for t in tokens] == [(3, (size // detector.backbone.patch_size) ** 2, 64)] * 2
    prediction = detector.predict(images, [UNSEEN] * 3)
    assert prediction.image_scores.shape == (3,) and prediction.anomaly_maps.shape == (3, size, size)
    assert ((prediction.anomaly_maps >= 0) & (prediction.anomaly_maps <= 1)).all()
    torch.testing.assert_close(prediction.image_scores, prediction.anomaly_maps.flatten(1).max(dim=1).values)
    assert detector.predict(images).anomaly_maps.shape == (3, size, size)  # class names are optional
    with pytest.raises(BackboneError, match=f"takes {size}x{size} images"):
        detector.predict(torch.zeros(1, 3, size + 16, size + 16))


TRAINING = {"epochs": 3, "batch_size": 8, "learning_rate": 0.01}


def _train(name: str, seen, unseen, caller_seed: int, **changes):
    """Build and fit the smoke model; also returns the caller's RNG state before and after, and
    predictions on unseen images."""
    torch.manual_seed(caller_seed)  # whatever the caller's RNG holds must not matter
    before = _state()
    detector = create_detector(name, smoke(name, **{**TRAINING, **changes}))
    initial = [p.clone() for p in detector.heads.parameters()]
    assert detector.fit(FitData(auxiliary=[seen])) is detector
    after = _state()
    prediction = detector.predict(_images(unseen, detector.transform), [UNSEEN] * 3)
    return detector, initial, (before, after), prediction


@pytest.fixture(scope="module", params=["dinov2", "sam"])
def trained(request, seen, unseen):
    return _train(request.param, seen, unseen, caller_seed=1)


def test_training_lowers_the_loss_and_keeps_zero_shot(trained, seen):
    detector, initial, (before, after), _ = trained
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert len(detector.loss_history) == TRAINING["epochs"]
    assert detector.loss_history[-1] < detector.loss_history[0], detector.loss_history
    assert detector.trained_categories == SEEN
    assert all(not torch.equal(a, b) for a, b in zip(initial, detector.heads.parameters()))
    assert not any(p.requires_grad for p in detector.backbone.parameters())
    with pytest.raises(ZeroShotViolation, match="refusing to predict"):
        detector.predict(_images(seen, detector.transform, 1), ["tile"])
    with pytest.raises(ValueError, match="needs FitData\\(auxiliary="):
        detector.fit(FitData())


@pytest.mark.parametrize("trained", ["dinov2"], indirect=True)  # the contract test checks SAM's determinism too
def test_same_seed_gives_bit_identical_outputs(trained, seen, unseen):
    detector, _, _, prediction = trained
    again, _, _, repeated = _train(detector.name, seen, unseen, caller_seed=12345)
    assert again.loss_history == detector.loss_history
    torch.testing.assert_close(repeated.anomaly_maps, prediction.anomaly_maps, rtol=0, atol=0)
    torch.testing.assert_close(repeated.image_scores, prediction.image_scores, rtol=0, atol=0)
    other = type(detector)(detector.config.replace(seed=1), backbone=detector.backbone)
    assert not torch.equal(other.heads[0].weight, detector.heads[0].weight)  # the seed does matter


def test_invalid_configs_name_the_field():
    with pytest.raises(ConfigError, match="image_size = 57 .*14 px patches.*multiple of 14"):
        smoke("dinov2", image_size=57)
    with pytest.raises(ConfigError, match="SAMLinearHeadsConfig.image_size = 518 .*multiple of 16"):
        SAMLinearHeadsConfig(image_size=518)  # why SAM does not run at AdaCLIP's 518
    with pytest.raises(ConfigError, match=r"layers = \(2, 5\) .*layers 1..4"):
        smoke("dinov2", layers=(2, 5))
    with pytest.raises(ConfigError, match="pretrained = 'dinov3' .*tags: lvd142m"):
        LinearHeadsConfig(pretrained="dinov3")
    with pytest.raises(ConfigError, match="backbone = 'resnet50' .*timm.models.resnet"):
        LinearHeadsConfig(backbone="resnet50", layers=(1,))
    with pytest.raises(ConfigError, match="backbone_kwargs = .*bogus"):
        smoke("sam", backbone_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="has no fields"):
        LinearHeadsConfig().replace(no_such_field=1)


def test_local_checkpoints_round_trip_and_wrong_shapes_are_named(tmp_path, unseen):
    config = smoke("dinov2")
    reference = DINOv2LinearHeads(config)
    images = _images(unseen, reference.transform)
    expected = reference.predict(images)
    for suffix in ("pth", "safetensors"):
        path = tmp_path / f"backbone.{suffix}"
        state = reference.backbone.model.state_dict()
        if suffix == "pth":
            torch.save(state, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        loaded = DINOv2LinearHeads(config.replace(pretrained=str(path), seed=config.seed))
        torch.testing.assert_close(loaded.predict(images).anomaly_maps, expected.anomaly_maps, rtol=0, atol=0)
        assert loaded.backbone.protocol() == {"pos_embed_resize": "none"}

    other = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                              **{**config.backbone_kwargs, "embed_dim": 32})
    torch.save(other.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"tensor 'blocks.0.attn.qkv.weight' has shape \[96, 32\] in the "
                                              r"checkpoint but the model expects \[192, 64\]"):
        DINOv2LinearHeads(config.replace(pretrained=str(tmp_path / "wrong.pth")))
    torch.save({"model": other.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        DINOv2LinearHeads(config.replace(pretrained=str(tmp_path / "wrapped.pth")))
    with pytest.raises(CheckpointError, match="does not exist"):
        DINOv2LinearHeads(config.replace(pretrained=str(tmp_path / "missing.pth")))


def test_shared_backbone_must_match_the_config(unseen):
    config = smoke("sam")
    first = SAMLinearHeads(config)
    shared = SAMLinearHeads(config, backbone=first.backbone)
    assert shared.backbone is first.backbone
    images = _images(unseen, first.transform)
    torch.testing.assert_close(shared.predict(images).anomaly_maps, first.predict(images).anomaly_maps)
    with pytest.raises(BackboneError, match="does not match"):
        SAMLinearHeads(config.replace(image_size=32), backbone=first.backbone)
    # a random-init backbone is the same whatever the caller's RNG holds
    torch.manual_seed(7)
    again = build_timm_backbone(config.backbone, None, config.image_size, backbone_kwargs=config.backbone_kwargs)
    assert again.weights_fingerprint() == first.backbone.weights_fingerprint()
