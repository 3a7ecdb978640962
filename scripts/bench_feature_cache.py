"""Time a CLIP-FSAC++ few-shot sweep through a cold and a warm feature cache (and, optionally, none).

    python scripts/bench_feature_cache.py [--backbone clipad-tiny-ViT] [--image-size 64] [--seeds 0]
                                          [--epochs 100] [--anomalies-per-image 20] [--categories ...]
                                          [--uncached]

The same sweep (1/2/4/8 shots x seeds x every synthetic category, or ``--categories``, random-init
weights) runs:

* cold: through an empty on-disk cache: every normal shot, synthetic anomaly (drawn, then kept
  with its mask), prompt ensemble and test image is made and embedded once, then saved as shards;
* warm: again, in a new process's view of the same cache directory (a new ``FeatureCache`` reading
  the memory-mapped shards), as a re-run of the notebook would: nothing is drawn or encoded;
* uncached (``--uncached``): the official way, encoding every batch at every step. Slow: each step
  encodes its few images in a padded batch of ``encode_batch_size``, so that its embeddings are
  the same bits as the cache's.

It prints each time, the warm-over-cold ratio, and the largest I-AUROC difference between the
sweeps (0 when the paths agree bit for bit, as they should on one machine).

    python scripts/bench_feature_cache.py --store-rows 400000 [--dim 640]

measures the store alone at paper scale instead: it saves that many random embeddings in shards
of 50,000, opens the cache again as a new run would, and reads 10,000 random rows, printing the
times and how much private memory the reopened cache costs.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clipad_lib.backbones import build_clip  # noqa: E402
from clipad_lib.data import load_dataset  # noqa: E402
from clipad_lib.engine import FeatureCache, evaluate_detector  # noqa: E402
from clipad_lib.engine.fewshot import fit_few_shot  # noqa: E402
from clipad_lib.methods import CLIPFSACConfig, CLIPFSACDetector  # noqa: E402


def sweep(backbone, config, cache, train, test, shots, seeds) -> tuple[float, list[float]]:
    start, aurocs = time.perf_counter(), []
    for category in test.categories:
        for k in shots:
            for seed in seeds:
                detector = CLIPFSACDetector(config, backbone, cache)
                fit_few_shot(detector, train, category, k, seed)
                evaluation = evaluate_detector(detector, test.subset(category=category), progress=False)
                aurocs.append(evaluation.metrics["image_auroc"])
    if cache is not None:
        cache.save()
    return time.perf_counter() - start, aurocs


def private_mb() -> float:
    """Resident anonymous memory (what the process itself holds; mapped file pages are the page cache's)."""
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["RssAnon"].split()[0]) / 1024


def store_at_scale(rows: int, dim: int, shard_rows: int = 50_000) -> None:
    rng = np.random.default_rng(0)
    keys = [f"{i:032x}" for i in range(rows)]
    with tempfile.TemporaryDirectory() as directory:
        cache = FeatureCache(directory)
        start = time.perf_counter()
        for first in range(0, rows, shard_rows):
            chunk = keys[first:first + shard_rows]
            cache.rows("paper", chunk, lambda indices: rng.standard_normal((len(indices), dim), dtype=np.float32))
            cache.save()
        print(f"saved {rows} rows of {dim} floats ({rows * dim * 4 / 2**30:.2f} GiB) in "
              f"{-(-rows // shard_rows)} shards: {time.perf_counter() - start:.1f} s")
        del cache
        before = private_mb()
        start = time.perf_counter()
        reopened = FeatureCache(directory)
        picked = [keys[i] for i in rng.choice(rows, 10_000, replace=False)]
        found = reopened.rows("paper", picked, lambda indices: exit("a saved row was missing"))
        print(f"reopened and read {len(found)} random rows in {time.perf_counter() - start:.2f} s; "
              f"private memory grew by {private_mb() - before:.0f} MB (the shards are mapped, not loaded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="clipad-tiny-ViT")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--anomalies-per-image", type=int, default=20,
                        help="synthetic anomalies per shot (CLIP-FSAC++'s default, one per epoch: 100)")
    parser.add_argument("--categories", nargs="+", help="synthetic categories to sweep (default: all eight)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--uncached", action="store_true", help="also run the sweep without a cache (slow)")
    parser.add_argument("--store-rows", type=int, help="measure the store alone with this many rows")
    parser.add_argument("--dim", type=int, default=640, help="embedding width for --store-rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.store_rows:
        store_at_scale(args.store_rows, args.dim)
        return
    train = load_dataset("synthetic", "train", categories=args.categories)
    test = load_dataset("synthetic", "test", categories=args.categories)
    backbone = build_clip(args.backbone, None, args.image_size)
    config = CLIPFSACConfig.for_dataset("visa", backbone=args.backbone, pretrained=None, image_size=args.image_size,
                                        epochs=args.epochs, anomalies_per_image=args.anomalies_per_image,
                                        image_learning_rate=1e-3, text_learning_rate=2e-4)
    runs = len(test.categories) * len(args.shots) * len(args.seeds)
    print(f"sweep: {runs} fits ({len(test.categories)} categories x shots {args.shots} x seeds {args.seeds}), "
          f"{args.epochs} epochs, {args.anomalies_per_image} anomalies per image, {args.backbone} at "
          f"{args.image_size} px, {args.threads} threads")
    scores = {}
    with tempfile.TemporaryDirectory() as directory:
        cold_cache = FeatureCache(directory)
        cold, scores["cold"] = sweep(backbone, config, cold_cache, train, test, args.shots, args.seeds)
        print(f"cold cache: {cold:.1f} s ({cold_cache.stats.misses} rows made, {cold_cache.stats.hits} hits)")
        warm_cache = FeatureCache(directory)
        warm, scores["warm"] = sweep(backbone, config, warm_cache, train, test, args.shots, args.seeds)
        print(f"warm cache: {warm:.1f} s (a re-run reading the saved shards: {warm_cache.stats.misses} rows made, "
              f"{warm_cache.stats.hits} hits)")
    if args.uncached:
        uncached, scores["uncached"] = sweep(backbone, config, None, train, test, args.shots, args.seeds)
        print(f"no cache:   {uncached:.1f} s (every batch encoded at every step)")
    difference = max(float(np.max(np.abs(np.subtract(scores[name], scores["cold"])))) for name in scores)
    print(f"ratio: the warm re-run is {cold / warm:.1f}x faster than cold; "
          f"largest I-AUROC difference between the sweeps {difference:.2g}")


if __name__ == "__main__":
    main()
