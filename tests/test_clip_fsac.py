"""CLIP-FSAC++: descriptor and losses on hand-made tensors, learning, the feature cache, bad input."""
import math

import numpy as np
import pytest
import torch

from clipad_lib.data import DatasetError
from clipad_lib.data.transforms import ImageTransform
from clipad_lib.engine import FeatureCache, evaluate_detector, run_few_shot
from clipad_lib.engine.fewshot import fit_few_shot
from clipad_lib.losses import cross_modal_contrastive
from clipad_lib.methods import CLIPACConfig, CLIPACDetector, CLIPFSACConfig, CLIPFSACDetector, FitData
from clipad_lib.methods.clip_fsac import CLIPFSACHead, cross_attention, text_logits

TINY = dict(backbone="clipad-tiny-ViT", pretrained=None, image_size=64)
SMOKE = dict(TINY, anomalies_per_image=20, image_learning_rate=1e-3, text_learning_rate=2e-4)


def _softplus(x):
    return math.log1p(math.exp(x))


def test_cross_attention_hand_computed():
    queries = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    weights = torch.softmax(torch.tensor([1.0, 0.0]) / math.sqrt(2), dim=0)
    expected = weights[0] * keys[0] + weights[1] * keys[1]
    torch.testing.assert_close(cross_attention(queries, keys)[0], expected)
    # Per image (keys [N, 1, C]): one key gets all the weight, whatever the query.
    per_image = cross_attention(torch.randn(2, 4), torch.randn(3, 1, 4))
    assert per_image.shape == (3, 2, 4)


def test_contrastive_losses_hand_computed():
    normal = torch.tensor([[1.0, 1.0]])        # cos 0.7071 with both texts
    anomalous = torch.tensor([[0.0, 3.0]])     # cos 0 with T+, 1 with T-
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    image_to_text, text_to_image = cross_modal_contrastive(normal, anomalous, text)
    c = 1 / math.sqrt(2)
    # i2t: normal prefers T+ over T- (equal: log 2); the anomaly prefers T- over T+.
    assert image_to_text.item() == pytest.approx(_softplus(c - c) + _softplus(0 - 1))
    # t2i: T+ prefers the normal image over the anomaly; T- prefers the anomaly over the normal.
    assert text_to_image.item() == pytest.approx(_softplus(0 - c) + _softplus(c - 1))
    halved = cross_modal_contrastive(normal, anomalous, text, temperature=0.5)
    assert halved[0].item() == pytest.approx(_softplus(0.0) + _softplus(-2.0))
    with pytest.raises(ValueError, match=r"text features \[2, 2\]"):
        cross_modal_contrastive(normal, anomalous, torch.zeros(3, 2))


def test_descriptor_shapes_and_switches():
    torch.manual_seed(0)
    features, text = torch.randn(6, 8), torch.randn(2, 8)
    head = CLIPFSACHead(8, CLIPFSACConfig(**TINY))
    batch = head(features, text, per_image=False)
    assert batch.visual.shape == (6, 8) and batch.adapted_text.shape == (2, 8) and batch.enhanced_text.shape == (2, 8)
    single = head(features, text, per_image=True)
    assert single.enhanced_text.shape == (6, 2, 8)
    # Per image, a score never depends on the other images of the batch.
    alone = head(features[:1], text, per_image=True)
    torch.testing.assert_close(alone.enhanced_text[0], single.enhanced_text[0])
    # alpha = (0, 1) and no TF: the visual features are CLIP's own; gamma1 = 0: CT = AT.
    plain = CLIPFSACHead(8, CLIPFSACConfig(**TINY, alpha=(0.0, 1.0), gamma1=0.0, vision_driven_text=False))
    output = plain(features, text, per_image=False)
    torch.testing.assert_close(output.visual, features)
    torch.testing.assert_close(output.enhanced_text, output.adapted_text)
    # Scores: S- of Eq. 15 equals the softmax over the two texts.
    logits = text_logits(output.visual, output.enhanced_text, 0.07)
    cos = torch.nn.functional.cosine_similarity(output.visual[:, None], output.enhanced_text[None], dim=-1)
    torch.testing.assert_close(logits, cos / 0.07)


def test_config_checks_residual_ratios_and_choices():
    with pytest.raises(ValueError, match="sum to 1"):
        CLIPFSACConfig(alpha=(0.5, 0.6))
    with pytest.raises(ValueError, match=r"CLIPFSACConfig.beta = \(-0.2, 1.2\) is not allowed: expected a sequence of 2 items, each a number in \[0"):
        CLIPFSACConfig(beta=(-0.2, 1.2))
    with pytest.raises(ValueError, match="CLIPFSACConfig.losses = 'hinge' is not allowed: expected one of 'both'"):
        CLIPFSACConfig(losses="hinge")
    visa = CLIPFSACConfig.for_dataset("visa")
    assert (visa.alpha, visa.gamma1, visa.synthesis) == ((0.1, 0.9), 0.7, "nsa")
    assert [visa.batch_size_for(k) for k in (1, 2, 4, 8)] == [1, 1, 2, 2]
    assert [CLIPFSACConfig().batch_size_for(k) for k in (1, 2, 4, 8)] == [1, 2, 2, 2]
    with pytest.raises(ValueError, match="settings for"):
        CLIPFSACConfig.for_dataset("btad")


@pytest.fixture(scope="module")
def cache():
    return FeatureCache()


def test_bad_input_fails_clearly(tiny_backbone, synthetic_train, synthetic_test, cache):
    detector = CLIPFSACDetector(CLIPFSACConfig(**TINY, epochs=1, anomalies_per_image=1), tiny_backbone, cache)
    with pytest.raises(DatasetError, match="only 20 normal training"):
        fit_few_shot(detector, synthetic_train, "pill", 50, seed=0)
    anomalous_only = synthetic_train.__class__("only-defects", [r for r in synthetic_test.records if r.label == 1])
    with pytest.raises(DatasetError, match="no normal training image"):
        fit_few_shot(detector, anomalous_only, "pill", 2, seed=0)
    with pytest.raises(RuntimeError, match="call fit"):
        detector.predict(torch.zeros(1, 3, 64, 64), ["pill"])
    with pytest.raises(ValueError, match="class name"):
        detector.fit(FitData(reference_images=torch.zeros(2, 3, 64, 64)))


def test_four_shot_learns_and_beats_zero_shot_clip_ac(tiny_backbone, synthetic_train, synthetic_test, cache):
    """On every synthetic category (seed 0): the loss falls, and the mean I-AUROC beats CLIP-AC's
    (the frozen backbone's zero-shot score, Fig. 2a) on the same random-init backbone."""
    clip_ac = CLIPACDetector(CLIPACConfig(**TINY), tiny_backbone, cache)
    ours, zero_shot, first, last = [], [], [], []
    for category in synthetic_test.categories:
        detector = CLIPFSACDetector(CLIPFSACConfig.for_dataset("visa", **SMOKE), tiny_backbone, cache)
        fit_few_shot(detector, synthetic_train, category, 4, seed=0)
        test = synthetic_test.subset(category=category)
        evaluation = evaluate_detector(detector, test, progress=False)
        assert evaluation.anomaly_maps is None and evaluation.metrics["pixel_auroc"] is None
        ours.append(evaluation.metrics["image_auroc"])
        zero_shot.append(evaluate_detector(clip_ac, test, progress=False).metrics["image_auroc"])
        first.append(np.mean(detector.loss_history[:10]))
        last.append(np.mean(detector.loss_history[-10:]))
    assert np.mean(last) < np.mean(first)
    assert np.mean(ours) > np.mean(zero_shot) + 0.02
    assert np.mean(ours) > 0.55


def test_same_seed_same_scores_and_snapshots_restore(tiny_backbone, synthetic_train, synthetic_test, cache):
    images = torch.stack([ImageTransform.for_backbone(tiny_backbone).image(s.image)
                          for s in synthetic_test.subset(category="washer")[:6]])
    scores = []
    for _ in range(2):
        detector = CLIPFSACDetector(CLIPFSACConfig(**SMOKE, epochs=6, snapshot_epochs=(2,)), tiny_backbone, cache)
        fit_few_shot(detector, synthetic_train, "washer", 2, seed=7)
        scores.append(detector.predict(images, ["washer"] * 6).image_scores)
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)
    with detector.at_epoch(2):
        early = detector.predict(images, ["washer"] * 6).image_scores
    assert not torch.equal(early, scores[1])
    torch.testing.assert_close(detector.predict(images, ["washer"] * 6).image_scores, scores[1])
    with pytest.raises(KeyError, match="no snapshot after epoch 3"):
        with detector.at_epoch(3):
            pass
    gradient = detector.gradient_maps(images[:2], ["washer"] * 2)
    assert gradient.shape == (2, 64, 64) and (gradient >= 0).all() and gradient.sum() > 0
    chunked = detector.gradient_maps(images[:5], ["washer"] * 5, batch_size=2)  # chunks of 2, 2, 1
    torch.testing.assert_close(chunked, detector.gradient_maps(images[:5], ["washer"] * 5), rtol=1e-4, atol=1e-7)
    embeddings = detector.embeddings(images, ["washer"] * 6)
    assert embeddings["clip"].shape == embeddings["adapted"].shape == (6, tiny_backbone.embed_dim)


def test_second_sweep_hits_the_cache_and_another_transform_misses(tiny_backbone, synthetic_root, synthetic_train,
                                                                 synthetic_test, tmp_path):
    cache = FeatureCache(tmp_path / "features")
    config = CLIPFSACConfig(**TINY, epochs=2, anomalies_per_image=3)

    def sweep(results_dir, transform=None):
        detector = CLIPFSACDetector(config, tiny_backbone, cache, transform=transform)
        for k in (1, 2):
            run_few_shot(detector, train=synthetic_train, test=synthetic_test, root=synthetic_root, k=k, seeds=[0, 1],
                         results_dir=results_dir, categories=["pill", "weave"])

    sweep(tmp_path / "first")
    first = (cache.stats.hits, cache.stats.misses)
    assert first[1] > 0
    sweep(tmp_path / "second")
    hits, misses = cache.stats.hits - first[0], cache.stats.misses - first[1]
    assert misses == 0 and hits == sum(first)  # every image of the second sweep came from the cache
    cache.save()
    reloaded = FeatureCache(tmp_path / "features")
    saved = len(cache)
    cache = reloaded
    sweep(tmp_path / "third")
    assert reloaded.stats.misses == 0 and len(reloaded) == saved  # and so did a new process's, from disk
    bilinear = ImageTransform(size=64, interpolation="bilinear")
    sweep(tmp_path / "fourth", transform=bilinear)
    assert reloaded.stats.misses > 0 and len(reloaded) > saved


def test_reported_numbers_are_complete_and_consistent():
    from clipad_lib.results import load_reported

    reported = load_reported("clip_fsac")
    counts = reported.groupby("table").size().to_dict()
    # Tab. I: 22 rows x (12 classes + mean); Tab. II: 23 rows x (15 + mean); V-VII: variants x K x datasets x 3;
    # Tab. III-IV include their "-" cells as rows without a value.
    assert counts == {"main:1": 286, "main:2": 368, "main:3": 216, "main:4": 22, "main:5": 72, "main:6": 96,
                      "main:7": 48}
    value = reported.set_index(["table", "method", "variant", "dataset", "category", "setting", "metric"])["value"]
    assert value[("main:1", "clip_fsac", "", "visa", "mean", "1-shot", "image_auroc")] == 97.6
    assert value[("main:2", "patchcore", "", "mvtec", "screw", "8-shot", "image_auroc")] == 61.9
    assert value[("main:3", "winclip", "", "mvtec", "mean", "2-shot", "image_aupr")] == 97.0
    assert value[("main:7", "clip_fsac", "synthesis-nsa", "mvtec", "mean", "8-shot", "image_f1_max")] == 96.0
    assert value[("main:6", "clip_fsac", "descriptor-none", "visa", "mean", "2-shot", "image_auroc")] == 64.4
