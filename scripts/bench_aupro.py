"""Time ``aupro`` on an MVTec-AD-sized input (1725 maps of 256x256) against anomalib's AUPRO.

    python scripts/bench_aupro.py [--images 1725] [--size 256] [--threads 2] [--anomalib-python PATH]

The masks hold one random disc in every second image; maps are noise plus a bump on the discs.
Both clipad recipes are timed; anomalib's ``_AUPRO`` (the official MVTec recipe, FPR <= 0.3) is
timed on the same input in the same run and its value checked against clipad's ``mvtec`` recipe.
anomalib is not a clipad dependency (it brings Lightning and its own pins): install it beside
clipad (``pip install anomalib==2.7.0``, the version measured), or keep it in another environment
and name that interpreter with ``--anomalib-python``; the reference then runs there.
The script prints both times and their ratio.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def make_input(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(0, images, 2):
        cy, cx = rng.integers(size // 8, size - size // 8, 2)
        radius = rng.integers(size // 50 + 1, size // 8)
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = 1
    maps = rng.random((images, size, size), dtype=np.float32) + np.float32(0.5) * masks  # float32, as methods return
    return masks, maps


def time_anomalib(masks: np.ndarray, maps: np.ndarray) -> dict:
    """anomalib's AUPRO on the whole input at once, as its evaluator accumulates it. Needs anomalib."""
    import torch
    from anomalib.metrics.aupro import _AUPRO

    start = time.perf_counter()
    metric = _AUPRO(fpr_limit=0.3)
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks.astype(np.int64)))
    value = float(metric.compute())
    return {"value": value, "seconds": time.perf_counter() - start}


def reference(args, masks, maps) -> dict | None:
    """anomalib's figures: in this interpreter if it imports, else in ``--anomalib-python``, else None."""
    try:
        import anomalib.metrics.aupro  # noqa: F401
    except ImportError:
        if not args.anomalib_python:
            return None
        command = [args.anomalib_python, __file__, "--reference-only", "--images", str(args.images),
                   "--size", str(args.size), "--threads", str(args.threads)]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            sys.exit(f"the reference run with {args.anomalib_python} failed:\n{finished.stderr[-2000:]}")
        return json.loads(finished.stdout.strip().splitlines()[-1])
    return time_anomalib(masks, maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1725)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--anomalib-python", help="an interpreter with anomalib installed, if this one lacks it")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    masks, maps = make_input(args.images, args.size)
    if args.reference_only:
        print(json.dumps(time_anomalib(masks, maps)))
        return
    from clipad_lib.metrics import aupro

    print(f"input: {args.images} maps of {args.size}x{args.size} ({masks.size / 1e6:.0f} M pixels), {args.threads} threads")
    ours = {}
    for variant in ("mvtec", "clip_ad"):
        start = time.perf_counter()
        value = aupro(masks, maps, variant=variant)
        ours[variant] = (value, time.perf_counter() - start)
        print(f"clipad   aupro variant={variant:<8} value={value:.6f} time={ours[variant][1]:.2f} s")
    anomalib = reference(args, masks, maps)
    if anomalib is None:
        print("anomalib: not installed (pip install anomalib==2.7.0, or --anomalib-python PATH); no ratio")
        return
    difference = abs(anomalib["value"] - ours["mvtec"][0])
    print(f"anomalib _AUPRO (fpr_limit=0.3)  value={anomalib['value']:.6f} time={anomalib['seconds']:.2f} s")
    print(f"ratio: clipad mvtec is {anomalib['seconds'] / ours['mvtec'][1]:.1f}x faster than anomalib; "
          f"|value difference| = {difference:.1e}")
    if difference > 1e-6:
        sys.exit(f"the values differ by {difference:.1e} (> 1e-6)")


if __name__ == "__main__":
    main()
