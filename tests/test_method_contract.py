"""The contract every registered method meets; a method added to the registry is checked here
without new test code."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clipad_lib.data.transforms import ImageTransform
from clipad_lib.engine import load_reference_images
from clipad_lib.methods import FitData, create_detector, list_methods, method_entry

TEST_CATEGORY = "pill"
AUXILIARY_CATEGORY = "tile"
CASES = [(name, kind) for name in list_methods() for kind in method_entry(name).fits_on]


def test_the_registry_lists_every_method():
    assert set(list_methods()) >= {"adaclip", "anomalyclip", "aprilgan", "clip_ac", "clip_fsac", "clip_patch_memory", "cocoop",
                                   "coop", "maple", "padim", "patchcore", "pdt", "spade", "winclip"}
    with pytest.raises(KeyError, match="unknown method 'nope'; registered: adaclip"):
        method_entry("nope")


def _global_state():
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(),
            torch.are_deterministic_algorithms_enabled())


def _assert_same_state(before, after):
    assert torch.equal(before[0], after[0]), "the global torch RNG moved"
    assert np.array_equal(before[1], after[1]), "the global numpy RNG moved"
    assert before[2] == after[2], "Python's random module moved"
    assert before[3] == after[3], "deterministic-algorithms mode changed"


def _fit_data(kind, detector, train, test):
    if kind == "nothing":
        return None
    if kind == "references":
        references = [r for r in train.subset(category=TEST_CATEGORY).records][:2]
        return FitData(reference_images=load_reference_images(references, detector.transform),
                       class_name=TEST_CATEGORY, seed=0)
    auxiliary = test.subset(category=AUXILIARY_CATEGORY)
    return FitData(auxiliary=[auxiliary])


def _build_fit_predict(name, kind, train, test):
    entry = method_entry(name)
    torch.manual_seed(1234)  # whatever the caller's RNG holds must not matter
    before = _global_state()
    detector = create_detector(name, entry.smoke_config())
    data = _fit_data(kind, detector, train, test)
    if data is not None:
        assert detector.fit(data) is detector
    _assert_same_state(before, _global_state())
    subset = test.subset(category=TEST_CATEGORY)
    samples = [subset[i] for i in range(3)]
    images = torch.stack([detector.transform.image(s.image) for s in samples])
    prediction = detector.predict(images, [TEST_CATEGORY] * len(samples))
    return detector, images, prediction


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_method_contract(name, kind, synthetic_train, synthetic_test):
    detector, images, prediction = _build_fit_predict(name, kind, synthetic_train, synthetic_test)
    size = images.shape[-1]
    assert detector.name == name
    assert detector.transform == ImageTransform.for_backbone(detector.backbone)
    assert prediction.image_scores.shape == (len(images),)
    assert torch.isfinite(prediction.image_scores).all()
    if detector.localizes:
        assert prediction.anomaly_maps is not None and prediction.anomaly_maps.shape == (len(images), size, size)
        assert torch.isfinite(prediction.anomaly_maps).all()
    else:
        assert prediction.anomaly_maps is None
    # The same config and seed give the same outputs, whatever ran in between.
    torch.rand(100)
    np.random.rand(10)
    _, _, again = _build_fit_predict(name, kind, synthetic_train, synthetic_test)
    torch.testing.assert_close(again.image_scores, prediction.image_scores, rtol=0, atol=0)
    if detector.localizes:
        torch.testing.assert_close(again.anomaly_maps, prediction.anomaly_maps, rtol=0, atol=0)


@pytest.mark.parametrize("name", list_methods())
def test_config_defaults_are_valid_and_unknown_fields_are_refused(name):
    entry = method_entry(name)
    config = entry.config()
    with pytest.raises(ValueError, match="has no fields"):
        config.replace(no_such_field=1)
    with pytest.raises(Exception):  # frozen: a config is changed by replace(), never in place
        config.device = "cuda"
    with pytest.raises(TypeError, match=f"{name} takes a {entry.config.__name__}"):
        create_detector(name, object())
