"""CoOp, CoCoOp, MaPLe and PDT as few-shot detectors: configs, shapes, determinism, learning."""
import math

import pytest
import torch

from clipad_lib.backbones import BackboneError, build_clip
from clipad_lib.data.transforms import ImageTransform
from clipad_lib.engine import evaluate_detector, load_reference_images
from clipad_lib.engine.fewshot import fit_few_shot
from clipad_lib.methods import FitData, create_detector, method_entry
from clipad_lib.methods.prompt_learners import CoCoOpConfig, CoOpConfig, MaPLeConfig, PDTConfig
from clipad_lib.methods.prompt_learning import (TrainingSet, class_sentences, frozen_image_features,
                                                memory_distance, state_logits)

LEARNERS = ("coop", "cocoop", "maple")
SHIPPED = dict(backbone="clipad-tiny-ViT", pretrained="clipad-synthetic", image_size=128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The text tower's matrices are tiny: on a shared CPU two threads cost ~40x more in
    synchronisation than they save. The caller's setting comes back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped_backbone():
    return build_clip(SHIPPED["backbone"], SHIPPED["pretrained"], SHIPPED["image_size"])


def _images(detector, dataset, category, count):
    subset = dataset.subset(category=category)
    return torch.stack([detector.transform.image(subset[i].image) for i in range(count)])


def _fit(detector, train, category, shots, seed):
    references = [r for r in train.subset(category=category).records][:shots]
    data = FitData(reference_images=load_reference_images(references, detector.transform), class_name=category,
                   seed=seed)
    return detector.fit(data)


def test_defaults_are_the_papers():
    coop, cocoop, maple = CoOpConfig(), CoCoOpConfig(), MaPLeConfig()
    assert (coop.context_length, coop.learning_rate, coop.train_batch_size) == (16, 0.002, 32)
    assert [coop.epochs_for(k) for k in (1, 2, 4, 8, 16, 3)] == [50, 100, 100, 200, 200, 100]
    assert (cocoop.context_length, cocoop.epochs_for(4), cocoop.train_batch_size) == (4, 10, 1)
    assert (maple.context_length, maple.prompt_depth, maple.epochs_for(4), maple.learning_rate,
            maple.train_batch_size) == (2, 9, 5, 0.0035, 4)
    for config in (coop, cocoop, maple, PDTConfig()):
        assert (config.backbone, config.pretrained, config.image_size) == ("ViT-B-16-plus-240", "laion400m_e31", 240)
    assert coop.anomalies_per_image == 150 and not coop.reference_memory
    # Constant warm-up for one epoch, then cosine from the base rate over all epochs.
    assert coop.learning_rate_at(0, 10) == 1e-5
    assert coop.learning_rate_at(1, 10) == pytest.approx(0.002)
    assert coop.learning_rate_at(6, 10) == pytest.approx(0.001)
    assert CoOpConfig(warmup_epochs=0).learning_rate_at(0, 4) == pytest.approx(0.002)


def test_config_errors_say_what_is_expected():
    with pytest.raises(ValueError, match="MaPLeConfig.prompt_depth = 13 is not allowed: ViT-B-16-plus-240 has 12"):
        MaPLeConfig(prompt_depth=13)
    with pytest.raises(ValueError, match="CoCoOpConfig.epochs = None is not allowed: CoCoOpConfig has no per-shot"):
        CoCoOpConfig(epochs=None)
    with pytest.raises(ValueError, match="CoOpConfig.synthesis = 'cutpaste' is not allowed: expected one of"):
        CoOpConfig(synthesis="cutpaste")
    with pytest.raises(ValueError,
                       match=r"PDTConfig.map_layer = 13 is not allowed: ViT-B-16-plus-240 has layers 1\.\.12"):
        PDTConfig(map_layer=13)
    with pytest.raises(ValueError, match="CoOpConfig.context_length = 0 is not allowed"):
        CoOpConfig(context_length=0)
    with pytest.raises(ValueError, match="has no fields"):
        PDTConfig().replace(epochs=3)  # PDT trains nothing, so it has no schedule


def test_helpers_hand_computed():
    # Items: anomalies first (rows after the K shots), then each anomaly's own source shot.
    training = TrainingSet(images=torch.zeros(2 + 6, 1).numpy(), masks=torch.zeros(8, 1).bool().numpy(), shots=2)
    rows, labels = training.rows(torch.arange(12))
    assert rows.tolist() == [2, 3, 4, 5, 6, 7, 0, 0, 0, 1, 1, 1]
    assert labels.tolist() == [1] * 6 + [0] * 6 and len(training) == 12
    assert class_sentences("metal-nut")[:2] == ["metal nut.", "flawless metal nut."]
    assert class_sentences("bottle")[-1] == "bottle with damage."
    text = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    logits = state_logits(torch.tensor([[[3.0, 3.0], [0.0, 1.0]]]), text, 0.5)  # [1, 2 patches, 2]
    torch.testing.assert_close(logits, torch.tensor([[[math.sqrt(2), math.sqrt(2)], [0.0, 2.0]]]))
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(memory_distance(torch.tensor([[[2.0, 0.0], [1.0, 1.0]]]), memory),
                               torch.tensor([[0.0, 1 - 1 / math.sqrt(2)]]))


@pytest.mark.parametrize("name", LEARNERS + ("pdt",))
def test_shapes_determinism_and_batching(name, synthetic_train, synthetic_test):
    entry = method_entry(name)
    runs = []
    for seed in (3, 3, 4):
        detector = _fit(create_detector(name, entry.smoke_config()), synthetic_train, "pill", 2, seed)
        images = _images(detector, synthetic_test, "pill", 4)
        runs.append(detector.predict(images, ["pill"] * 4))
    first, again, other = runs  # ``detector`` is the last one fitted: seed 4, ``other``
    assert first.image_scores.shape == (4,) and first.anomaly_maps.shape == (4, 64, 64)
    assert ((first.image_scores >= 0) & (first.image_scores <= 1)).all()
    torch.testing.assert_close(again.image_scores, first.image_scores, rtol=0, atol=0)
    torch.testing.assert_close(again.anomaly_maps, first.anomaly_maps, rtol=0, atol=0)
    if name != "pdt":  # another seed: other synthetic anomalies, other initial prompts
        assert not torch.equal(other.image_scores, first.image_scores)
    # One batch over two classes equals each image alone (CoCoOp conditions on each image only).
    mixed = detector.predict(images, ["pill", "tile", "pill", "tile"])
    alone = detector.predict(images[1:2], ["tile"])
    torch.testing.assert_close(mixed.image_scores[1:2], alone.image_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed.anomaly_maps[1:2], alone.anomaly_maps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed.image_scores[[0, 2]], other.image_scores[[0, 2]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LEARNERS)
def test_bad_input_fails_clearly(name):
    detector = create_detector(name, method_entry(name).smoke_config())
    with pytest.raises(RuntimeError, match="call fit"):
        detector.predict(torch.zeros(1, 3, 64, 64), ["pill"])
    with pytest.raises(ValueError, match="class name"):
        detector.fit(FitData(reference_images=torch.zeros(2, 3, 64, 64)))
    with pytest.raises(ValueError, match=r"reference_images=\[K, 3, S, S\]"):
        detector.fit(FitData(class_name="pill"))
    with pytest.raises(ValueError, match=r"must be \[K, 3, S, S\], got \[2, 64, 64\]"):
        detector.fit(FitData(reference_images=torch.zeros(2, 64, 64), class_name="pill"))


def test_maple_depth_beyond_the_text_tower_fails(synthetic_train):
    detector = create_detector("maple", method_entry("maple").smoke_config(prompt_depth=6))  # 4 text layers
    with pytest.raises(BackboneError, match="prompting depth 6 exceeds the 4 text layers"):
        _fit(detector, synthetic_train, "pill", 1, 0)


def test_pdt_is_unchanged_by_fit_apart_from_the_class(synthetic_train, synthetic_test):
    detector = create_detector("pdt", method_entry("pdt").smoke_config())
    images = _images(detector, synthetic_test, "washer", 3)
    before = detector.predict(images, ["washer"] * 3)
    with pytest.raises(ValueError, match="one class name per image"):
        detector.predict(images)
    _fit(detector, synthetic_train, "washer", 2, seed=5)
    after = detector.predict(images)  # the class comes from the fit
    torch.testing.assert_close(after.image_scores, before.image_scores, rtol=0, atol=0)
    torch.testing.assert_close(after.anomaly_maps, before.anomaly_maps, rtol=0, atol=0)
    with pytest.raises(ValueError, match="got 2 class names for 3 images"):
        detector.predict(images, ["washer"] * 2)
    # With the k-shot memory, fit stores the shots' patches and the scores change.
    memory = _fit(create_detector("pdt", method_entry("pdt").smoke_config(reference_memory=True)),
                  synthetic_train, "washer", 2, seed=5)
    assert memory.memory.shape == (2 * 8 * 8, memory.backbone.embed_dim)
    assert not torch.equal(memory.predict(images).image_scores, before.image_scores)


def test_training_leaves_the_backbone_frozen_and_maple_prompts_the_image(shipped_backbone, synthetic_train,
                                                                         synthetic_test):
    frozen = {k: v.clone() for k, v in shipped_backbone.state_dict().items()}
    maple = create_detector("maple", shared_backbone=shipped_backbone, **SHIPPED, epochs=1, anomalies_per_image=2,
                            prompt_depth=3, warmup_epochs=0)
    _fit(maple, synthetic_train, "tile", 2, seed=0)
    assert all(torch.equal(v, frozen[k]) for k, v in shipped_backbone.state_dict().items())
    images = _images(maple, synthetic_test, "tile", 2)
    with torch.no_grad():
        prompted, _ = maple.learner.encode_images(images)
        plain, _ = frozen_image_features(shipped_backbone, images, shipped_backbone.num_layers)
    assert not torch.allclose(prompted, plain)
    assert maple.transform == ImageTransform.for_backbone(shipped_backbone)


# Short schedules on the shipped tiny CLIP (seconds each); the rate is raised to fit them.
LEARNING = {
    "coop": dict(epochs=8, train_batch_size=8),
    "cocoop": dict(epochs=3, train_batch_size=4),
    "maple": dict(epochs=3, train_batch_size=8, prompt_depth=3),
}


@pytest.fixture(scope="module")
def pdt_on_pill(shipped_backbone, synthetic_train, synthetic_test):
    detector = create_detector("pdt", shared_backbone=shipped_backbone, **SHIPPED)
    fit_few_shot(detector, synthetic_train, "pill", 2, seed=0)
    return evaluate_detector(detector, synthetic_test.subset(category="pill"), batch_size=32, progress=False).metrics


@pytest.mark.parametrize("name", LEARNERS)
def test_learners_learn_on_synthetic_shots(name, shipped_backbone, synthetic_train, synthetic_test, pdt_on_pill):
    """2-shot "pill" (seed 0): the loss falls, the image AUROC is well above chance, and the learned
    prompts localize far better than the fixed template ensemble on the same backbone."""
    detector = create_detector(name, shared_backbone=shipped_backbone, **SHIPPED, **LEARNING[name],
                               anomalies_per_image=4, warmup_epochs=0, learning_rate=0.01)
    fit_few_shot(detector, synthetic_train, "pill", 2, seed=0)
    metrics = evaluate_detector(detector, synthetic_test.subset(category="pill"), batch_size=32,
                                progress=False).metrics
    history = detector.loss_history
    assert history[-1] < 0.6 * history[0], history
    assert metrics["image_auroc"] > 0.7, metrics
    assert metrics["pixel_auroc"] > pdt_on_pill["pixel_auroc"] + 0.15, (metrics, pdt_on_pill)


def test_cocoop_and_maple_contexts_start_from_a_photo_of_a(shipped_backbone):
    from clipad_lib.backbones.prompted import text_token_embeddings
    from clipad_lib.methods.prompt_learning import ContextPrompts

    assert CoCoOpConfig().context_init == MaPLeConfig().context_init == "a photo of a"
    assert CoOpConfig().context_init is None  # CoOp's scripts start from random context
    words = text_token_embeddings(shipped_backbone, shipped_backbone.tokenizer(["a photo of a"]))[0, 1:5]
    learner = ContextPrompts(shipped_backbone, 8, 4, conditional=True, init_words="a photo of a")
    torch.testing.assert_close(learner.prompted.text_static[0].detach(), words)
    maple = create_detector("maple", MaPLeConfig(**SHIPPED, prompt_depth=3), shared_backbone=shipped_backbone)
    learner = maple.build_learner()
    torch.testing.assert_close(learner.prompted.text_static[0].detach(), words[:2])
    assert not torch.equal(learner.prompted.text_static[1].detach()[:, :4], words[:2, :4])  # deeper: random
    with pytest.raises(ValueError, match="has 4 tokens; the context has 6"):
        ContextPrompts(shipped_backbone, 8, 6, init_words="a photo of a")
