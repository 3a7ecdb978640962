"""Mixed-precision evaluation: ``evaluate_detector(precision="bf16")`` against fp32.

On the synthetic ``pill`` + ``checker`` test images (52, 64 px) with the tiny random-init CLIP
(``pretrained=None``, the registry smoke configs, untrained: zero-shot predict needs no fit), bf16
autocast on the CPU was measured against fp32 (AMD EPYC with avx512_bf16, torch 2.14):

==========  ============  ==============  ================  ================
method      max |d map|   max |d score|   |d image AUROC|   |d pixel AUROC|
==========  ============  ==============  ================  ================
AdaCLIP     0.026         0.055           0.009             0.0015
APRIL-GAN   0.113         0.013           0.006             0.0008
==========  ============  ==============  ================  ================

The tolerances below are about twice those. Most of the difference comes from the
100 x cosine logits (patch-text and image-text) being computed by bf16 matrix products: a cosine
rounded to bf16 (8 significant bits) moves a logit of up to 100 by ~0.4. APRIL-GAN's map is the
sum of four layers' probabilities (values 0..4), hence its larger absolute tolerance. The image
AUROC of a random-init model sits near 0.5 with nearly tied scores, so it moves more on smaller
sets (up to 0.14 on single 26-image categories); 52 images keep it stable.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from clipad_lib.data import load_dataset
from clipad_lib.engine import evaluate_detector, evaluation_protocol
from clipad_lib.engine.evaluate import PRECISIONS, predict_with_precision
from clipad_lib.methods import create_detector, method_entry

CATEGORIES = ["pill", "checker"]
# method -> (maps, image scores, image AUROC, pixel AUROC) absolute tolerances, bf16 vs fp32
TOLERANCES = {
    "adaclip": (0.06, 0.12, 0.05, 0.02),
    "aprilgan": (0.25, 0.05, 0.05, 0.02),
}


@pytest.fixture(scope="module")
def test_set(synthetic_root):
    return load_dataset("synthetic", "test", root=synthetic_root, categories=CATEGORIES)


@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_bf16_autocast_stays_close_to_fp32(name, test_set):
    detector = create_detector(name, method_entry(name).smoke_config())
    images = torch.stack([detector.transform.image(test_set[i].image) for i in range(4)])
    names = [test_set[i].category for i in range(4)]
    before = detector.predict(images, names)
    full = evaluate_detector(detector, test_set, batch_size=16, progress=False)
    half = evaluate_detector(detector, test_set, batch_size=16, progress=False, precision="bf16")
    map_tol, score_tol, image_tol, pixel_tol = TOLERANCES[name]
    assert half.anomaly_maps.dtype == np.float32 and half.image_scores.dtype == np.float32
    map_delta = float(np.abs(half.anomaly_maps - full.anomaly_maps).max())
    score_delta = float(np.abs(half.image_scores - full.image_scores).max())
    assert 0 < map_delta <= map_tol, map_delta  # > 0: autocast really ran
    assert score_delta <= score_tol, score_delta
    assert abs(half.metrics["image_auroc"] - full.metrics["image_auroc"]) <= image_tol, (half.metrics, full.metrics)
    assert abs(half.metrics["pixel_auroc"] - full.metrics["pixel_auroc"]) <= pixel_tol, (half.metrics, full.metrics)
    # The precision is recorded only when it is not fp32: fp32 protocols (and record hashes) are unchanged.
    assert half.protocol == {**evaluation_protocol(detector), "precision": "bf16"}
    assert "precision" not in full.protocol and full.protocol == evaluation_protocol(detector)
    assert evaluation_protocol(detector, precision="fp32") == evaluation_protocol(detector)

    # fp32 after a bf16 run is what it was (bit for bit): no reduced-precision state (cached text
    # embeddings) is left behind, and "fp32" calls predict untouched.
    again = predict_with_precision(detector, images, names, "fp32")
    assert torch.equal(again.anomaly_maps, before.anomaly_maps) and torch.equal(again.image_scores, before.image_scores)
    bf16 = predict_with_precision(detector, images, names, "bf16")
    assert bf16.anomaly_maps.dtype == torch.float32 and bf16.image_scores.dtype == torch.float32


def test_bad_precisions_are_refused(test_set):
    detector = create_detector("winclip", method_entry("winclip").smoke_config())
    subset = test_set.subset(category="pill")
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    for bad in ("fp64", "FP32", "float16", "", None, 16):
        with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
            evaluate_detector(detector, subset, progress=False, precision=bad)
        with pytest.raises(ValueError, match="precision must be one of"):
            evaluation_protocol(detector, precision=bad)
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device.*use precision='bf16'"):
        evaluate_detector(detector, subset, progress=False, precision="fp16")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        predict_with_precision(detector, torch.zeros(1, 3, 64, 64), ["pill"], "fp16")


def test_reduced_precision_refuses_a_feature_cache(test_set):
    """A detector with a feature cache would store bf16 embeddings under the fp32 keys."""
    cached = types.SimpleNamespace(name="cached", feature_cache=object(), config=types.SimpleNamespace(device="cpu"))
    with pytest.raises(ValueError, match="feature cache"):
        evaluate_detector(cached, test_set, progress=False, precision="bf16")


def test_the_runners_evaluate_in_the_asked_precision_and_record_it(synthetic_root, tmp_path):
    from clipad_lib.engine import Experiment, FewShotProtocol, notebook_context

    ctx = notebook_context("smoke", results_dir=tmp_path, precision="bf16", quiet=True)
    config = {**vars(method_entry("clip_patch_memory").smoke_config())}
    experiment = Experiment("clip_patch_memory", FewShotProtocol(("synthetic",), (1,), (0,), ("pill",)), changes=config)
    [half] = ctx.run(experiment).records
    [full] = notebook_context("smoke", results_dir=tmp_path / "fp32", quiet=True).run(experiment).records
    assert half.protocol["precision"] == "bf16" and "precision" not in full.protocol
    assert half.input_hash != full.input_hash  # a bf16 record is never reused for an fp32 run
    assert half.metrics["pixel_auroc"] != full.metrics["pixel_auroc"]  # autocast really ran
    assert abs(half.metrics["pixel_auroc"] - full.metrics["pixel_auroc"]) < 0.02

    fitted = []
    detector = create_detector("clip_patch_memory", method_entry("clip_patch_memory").smoke_config())
    detector.fit = lambda data: fitted.append(data)  # must not be reached
    from clipad_lib.engine import run_few_shot
    train, test = (load_dataset("synthetic", split, root=synthetic_root, categories=["pill"]) for split in ("train", "test"))
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        run_few_shot(detector, train=train, test=test, root=synthetic_root, k=1, seeds=[0], results_dir=tmp_path / "x",
                     precision="fp16")
    assert fitted == []
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        notebook_context("smoke", results_dir=tmp_path, precision="half", quiet=True)
