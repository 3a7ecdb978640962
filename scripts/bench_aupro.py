"""Time ``aupro`` on an MVTec-AD-sized input: 1725 maps of 256x256 (both recipes).

Usage: python scripts/bench_aupro.py [--images 1725] [--size 256] [--threads 2]
The masks hold one random disc in every second image; maps are noise plus a bump on the discs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from clipad_lib.metrics import aupro


def make_input(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(0, images, 2):
        cy, cx = rng.integers(size // 8, size - size // 8, 2)
        radius = rng.integers(size // 50 + 1, size // 8)
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = 1
    maps = rng.random((images, size, size), dtype=np.float32) + 0.5 * masks
    return masks, maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1725)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    masks, maps = make_input(args.images, args.size)
    print(f"input: {args.images} maps of {args.size}x{args.size} ({masks.size / 1e6:.0f} M pixels)")
    for variant in ("mvtec", "clip_ad"):
        start = time.perf_counter()
        value = aupro(masks, maps, variant=variant)
        print(f"aupro variant={variant:<8} value={value:.4f} time={time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
