"""Time a CLIP-FSAC++ few-shot sweep with and without the frozen-encoder feature cache.

    python scripts/bench_feature_cache.py [--image-size 64] [--seeds 0] [--epochs 100]

The same sweep (1/2/4/8 shots x seeds x every synthetic category, the tiny random-init CLIP)
runs twice: once encoding every batch at every step as the official code does, once through a
fresh FeatureCache (every normal shot, synthetic anomaly and test image embedded once). Both
produce the same scores up to float rounding; the script checks that and prints the timings.
"""
from __future__ import annotations

import argparse
import os
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
    return time.perf_counter() - start, aurocs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--anomalies-per-image", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    backbone = build_clip("clipad-tiny-ViT", None, args.image_size)
    config = CLIPFSACConfig.for_dataset("visa", backbone="clipad-tiny-ViT", pretrained=None, image_size=args.image_size,
                                        epochs=args.epochs, anomalies_per_image=args.anomalies_per_image,
                                        image_learning_rate=1e-3, text_learning_rate=2e-4)
    runs = len(test.categories) * len(args.shots) * len(args.seeds)
    print(f"sweep: {runs} fits ({len(test.categories)} categories x shots {args.shots} x seeds {args.seeds}), "
          f"{args.epochs} epochs, {args.anomalies_per_image} anomalies per image, {args.image_size} px")
    uncached, scores_uncached = sweep(backbone, config, None, train, test, args.shots, args.seeds)
    print(f"without the cache: {uncached:.1f} s")
    cache = FeatureCache()
    cached, scores_cached = sweep(backbone, config, cache, train, test, args.shots, args.seeds)
    print(f"with a cold cache:  {cached:.1f} s ({cache.stats.misses} images encoded, {cache.stats.hits} hits)")
    warm, _ = sweep(backbone, config, cache, train, test, args.shots, args.seeds)
    print(f"with a warm cache:  {warm:.1f} s (a second sweep: every image a hit)")
    print(f"speed-up: {uncached / cached:.1f}x cold, {uncached / warm:.1f}x warm; "
          f"largest I-AUROC difference {np.max(np.abs(np.subtract(scores_cached, scores_uncached))):.2g}")


if __name__ == "__main__":
    main()
