"""The captioned corpus, the pretraining loop and the shipped tiny CLIP."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from clipad_lib.backbones import BackboneError, build_clip
from clipad_lib.backbones import clip as clip_module
from clipad_lib.data import synthetic
from clipad_lib.pretraining import PretrainConfig, corpus, pretrain, save_log, save_weights, write_model_card
from clipad_lib.pretraining.card import STEM, WEIGHTS


def test_where_names_the_mask_position_on_a_three_by_three_grid():
    mask = np.zeros((30, 30), bool)
    mask[2:5, 1:4] = True
    assert corpus.where(mask) == "at the top left"
    mask[:] = False
    mask[14:16, 14:16] = True
    assert corpus.where(mask) == "in the centre"
    mask[:] = False
    mask[12:18, 25:29] = True
    assert corpus.where(mask) == "on the right"
    mask[:] = False
    mask[26:29, 13:17] = True
    assert corpus.where(mask) == "at the bottom"


def test_captions_name_the_category_and_only_defective_ones_name_a_defect():
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = True
    defect_words = {w for words in corpus.DEFECT_WORDS.values() for w in words} | {"damaged", "defect", "broken"}
    for _ in range(50):
        normal = corpus.caption("gear", None, None, rng)
        defective = corpus.caption("gear", "hole", mask, rng)
        assert "gear" in normal and "gear" in defective
        assert not any(f" {w}" in normal for w in defect_words - {"defect"}) and "with a defect" not in normal
        assert any(w in defective for w in ("hole", "puncture", "damaged", "defect", "broken", "damage", "flaw"))


def test_the_pool_is_deterministic_and_its_pairs_differ_exactly_on_their_masks():
    first = corpus.make_pool(2, seed=0, image_size=96)
    again = corpus.make_pool(2, seed=0, image_size=96)
    heldout = corpus.make_pool(2, seed=0, image_size=96, split=1)
    assert len(first) == 2 * len(corpus.CATEGORIES) == 48
    assert np.array_equal(first.defective, again.defective) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.normal, heldout.normal)
    changed = np.any(first.normal != first.defective, axis=-1)
    assert np.array_equal(changed, first.masks) and first.masks.reshape(48, -1).sum(1).min() >= 8
    with pytest.raises(ValueError, match="96 px or more"):
        corpus.make_pool(1, seed=0, image_size=64)


def test_no_corpus_image_is_an_evaluation_image(synthetic_root):
    """The eight evaluation categories are drawn from other seeds: no pool image equals a test or
    train image of the embedded set."""
    pool = corpus.make_pool(20, seed=0, image_size=128, categories=synthetic.CATEGORIES)
    from PIL import Image

    evaluation = {Image.open(path).tobytes() for path in synthetic_root.glob("*/*/*/*.png") if "ground_truth" not in str(path)}
    assert len(evaluation) == 8 * (20 + 10 + 16)
    assert not any(image.tobytes() in evaluation for image in np.concatenate([pool.normal, pool.defective]))


def test_a_batch_pairs_each_normal_crop_with_its_defective_twin():
    pool = corpus.make_pool(1, seed=0, image_size=96)
    images, captions = corpus.sample_batch(pool, 8, np.random.default_rng(3))
    assert images.shape == (16, 3, 96, 96) and 0 <= float(images.min()) and float(images.max()) <= 1
    for normal, defective, normal_caption, defect_caption in zip(images[:8], images[8:], captions[:8], captions[8:]):
        assert (normal - defective).abs().amax() > 0.05  # the crop shows the defect
        [category] = [c for c in corpus.CATEGORIES if c in normal_caption.rstrip(".").split()]
        assert category in defect_caption.rstrip(".").replace(":", "").split()


def test_pretraining_lowers_the_loss_and_is_repeatable_bit_for_bit():
    config = PretrainConfig(image_size=96, pairs_per_category=2, heldout_pairs_per_category=2, steps=16,
                            pairs_per_batch=8, warmup_steps=2, eval_every=8)
    model, log = pretrain(config)
    _, again = pretrain(config)
    assert log.loss == again.loss
    assert [e["step"] for e in log.evaluations] == [0, 8, 16]
    assert np.mean(log.loss[-4:]) < np.mean(log.loss[:4])
    assert set(log.evaluations[-1]) >= {"retrieval_i2t", "retrieval_t2i", "category_accuracy", "state_auroc"}


def test_saved_weights_load_through_build_clip_with_a_card(tmp_path):
    config = PretrainConfig(image_size=96, pairs_per_category=1, heldout_pairs_per_category=1, steps=2,
                            pairs_per_batch=4, warmup_steps=1, eval_every=2)
    model, log = pretrain(config)
    size = save_weights(model, tmp_path / WEIGHTS.name)
    save_log(log, tmp_path / f"{STEM}.log.json")
    card = write_model_card(tmp_path).read_text()
    assert "2 × 8 images" in card and f"{size / 2**20:.2f} MiB" in card
    loaded = build_clip("clipad-tiny-ViT", str(tmp_path / WEIGHTS.name), image_size=96)
    assert loaded.protocol()["pos_embed_resize"] == "none"
    state = loaded.model.state_dict()
    for key, value in model.state_dict().items():  # float16 on disk, float32 in memory, same values
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value.float()), key
    resized = build_clip("clipad-tiny-ViT", str(tmp_path / WEIGHTS.name), image_size=128)
    assert resized.protocol()["pos_embed_resize"] == "bicubic, antialias"


def test_the_config_refuses_impossible_values():
    with pytest.raises(ValueError, match="patch_dropout"):
        replace(PretrainConfig(), patch_dropout=1.0)
    with pytest.raises(ValueError, match="steps"):
        replace(PretrainConfig(), steps=0)


def test_a_shipped_tag_fails_clearly_for_another_architecture_or_a_missing_file(monkeypatch, tmp_path):
    with pytest.raises(BackboneError, match="exist for clipad-tiny-ViT only"):
        build_clip("clipad-mini-ViT", "clipad-synthetic")
    monkeypatch.setitem(clip_module.SHIPPED_WEIGHTS, ("clipad-tiny-ViT", "clipad-synthetic"), tmp_path / "gone.safetensors")
    with pytest.raises(BackboneError, match="pretrain_tiny_clip.py"):
        build_clip("clipad-tiny-ViT", "clipad-synthetic")


def test_the_shipped_tiny_clip_detects_defects_zero_shot(synthetic_root):
    """The shipped weights, on two held-out evaluation categories: CLIP-AC's zero-shot image AUROC
    is well above chance, where the same architecture at random init is not."""
    from clipad_lib.data import load_dataset
    from clipad_lib.engine import evaluate_detector
    from clipad_lib.methods import create_detector

    test = load_dataset("synthetic", "test", root=synthetic_root, categories=["pill", "weave"])
    aurocs = {}
    for weights in ("clipad-synthetic", None):
        detector = create_detector("clip_ac", backbone="clipad-tiny-ViT", pretrained=weights, image_size=128)
        aurocs[weights] = np.mean([evaluate_detector(detector, test.subset(category=c), progress=False)
                                   .metrics["image_auroc"] for c in test.categories])
    assert aurocs["clipad-synthetic"] >= 0.75, aurocs
    assert aurocs["clipad-synthetic"] > aurocs[None] + 0.15, aurocs
