"""The feature cache: batch-invariant encoding, memory-mapped shards, and what a warm sweep skips."""
import numpy as np
import pytest
import torch

from clipad_lib.engine import FeatureCache, evaluate_detector
from clipad_lib.engine.fewshot import fit_few_shot
from clipad_lib.feature_cache import encode_in_fixed_batches
from clipad_lib.methods import CLIPFSACConfig, CLIPFSACDetector

TINY = dict(backbone="clipad-tiny-ViT", pretrained=None, image_size=64)


def test_fixed_batches_give_every_image_the_same_bits_whatever_its_companions(tiny_backbone):
    images = torch.randn(11, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    encode = lambda batch: tiny_backbone.encode_image(batch, normalize=False)  # noqa: E731
    with torch.no_grad():
        together = encode_in_fixed_batches(encode, images, 8)
        alone = torch.cat([encode_in_fixed_batches(encode, images[i:i + 1], 8) for i in range(11)])
        shuffled = encode_in_fixed_batches(encode, images.flip(0), 8).flip(0)
    assert together.shape == (11, tiny_backbone.embed_dim)
    assert torch.equal(together, alone) and torch.equal(together, shuffled)


def test_rows_are_computed_once_per_key_and_saved_as_memory_mapped_shards(tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []

    def compute(indices):
        calls.append(list(indices))
        return np.stack([np.full(3, float(i)) for i in indices]).astype(np.float32)

    first = cache.rows("space", ["a", "b", "a"], compute)
    assert calls == [[0, 1]] and first.tolist() == [[0] * 3, [1] * 3, [0] * 3]
    assert cache.stats.misses == 2 and cache.stats.hits == 1
    (shard,) = cache.save()
    assert shard.parent == tmp_path / "space" and shard.with_suffix(".keys").read_text().split() == ["a", "b"]
    assert cache.save() == []  # nothing new: no empty shard
    cache.rows("space", ["c"], compute)
    assert len(cache.save()) == 1 and len(list((tmp_path / "space").glob("*.npy"))) == 2  # a save adds a shard

    reloaded = FeatureCache(tmp_path)
    rows = reloaded.rows("space", ["c", "a", "b"], lambda indices: pytest.fail("every key is on disk"))
    assert rows.tolist() == [[0] * 3, [0] * 3, [1] * 3] and reloaded.stats.hits == 3
    assert isinstance(reloaded._table("space").blocks[0], np.memmap)  # read from the shard, not loaded whole


def test_a_shard_whose_rows_file_is_damaged_is_skipped_and_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.rows("space", ["a"], lambda indices: np.ones((1, 4), np.float32))
    (shard,) = cache.save()
    shard.write_bytes(b"not an npy file")
    with pytest.warns(RuntimeWarning, match="skipping shard"):
        rows = FeatureCache(tmp_path).rows("space", ["a"], lambda indices: np.zeros((1, 4), np.float32))
    assert rows.tolist() == [[0.0] * 4]
    with pytest.raises(ValueError, match="do not fit a namespace"):
        cache.rows("space", ["b"], lambda indices: np.ones((1, 5), np.float32))


def test_cached_and_uncached_fits_agree_and_a_warm_sweep_draws_no_anomaly(tiny_backbone, synthetic_train,
                                                                        synthetic_test, monkeypatch):
    # Before fixed-size encoding batches the two paths differed in the last bits of the embeddings,
    # which 100 epochs of Adam turned into I-AUROC differences of up to 0.019 (scripts/bench_feature_cache.py).
    from clipad_lib import synthesis

    config = CLIPFSACConfig(**TINY, epochs=30, anomalies_per_image=4, encode_batch_size=8)
    test = synthetic_test.subset(category="pill")

    def fit_and_score(cache):
        detector = CLIPFSACDetector(config, tiny_backbone, cache)
        fit_few_shot(detector, synthetic_train, "pill", 4, 0)
        return detector, evaluate_detector(detector, test, progress=False)

    uncached, uncached_eval = fit_and_score(None)
    cache = FeatureCache()
    cached, cached_eval = fit_and_score(cache)
    assert cached.loss_history == uncached.loss_history
    assert np.array_equal(cached_eval.image_scores, uncached_eval.image_scores)
    assert abs(cached_eval.metrics["image_auroc"] - uncached_eval.metrics["image_auroc"]) <= 1e-4

    drawn = []
    original = synthesis.synthesize_shot_anomalies
    monkeypatch.setattr(synthesis, "synthesize_shot_anomalies",
                        lambda *args, **kw: drawn.append(1) or original(*args, **kw))
    misses = cache.stats.misses
    warm, warm_eval = fit_and_score(cache)
    assert drawn == [] and cache.stats.misses == misses  # anomalies, embeddings and prompts all came from the cache
    assert warm.loss_history == cached.loss_history
    assert np.array_equal(warm_eval.image_scores, cached_eval.image_scores)
