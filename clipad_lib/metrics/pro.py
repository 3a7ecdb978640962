"""Per-Region Overlap (PRO) and the normalized area under the PRO curve (AUPRO).

Two recipes are in use and give different numbers, so both are offered and every run
record stores which one it used:

``"mvtec"`` (default) — the official MVTec AD evaluation (Bergmann et al., IJCV 2021):
    every distinct score is a threshold; the PRO curve (mean overlap over all connected
    ground-truth regions of the dataset vs. the false-positive rate over normal pixels)
    is integrated with the trapezoid rule from FPR 0 to ``fpr_limit`` (interpolating at the
    limit) and divided by ``fpr_limit``.

``"clip_ad"`` — the recipe of the APRIL-GAN / AnomalyCLIP / AdaCLIP code bases:
    ``max_step`` (200) evenly spaced thresholds ``arange(min, max, (max - min) / max_step)``,
    a pixel is positive when ``map > threshold``; points with FPR < ``fpr_limit`` are kept,
    their FPRs min-max rescaled to [0, 1], and the area computed with the trapezoid rule.

Both need the same two ingredients: each normal pixel weighs ``1 / #normal pixels`` on the
FPR axis, and each pixel of region ``r`` weighs ``1 / (#regions * area_r)`` on the PRO axis.
With those weights, FPR and PRO at any threshold are sums over the pixels above it, so the
whole curve comes from one sort (``mvtec``) or one weighted histogram (``clip_ad``) instead
of one pass over all pixels per threshold. This keeps an MVTec-sized input (1725 maps of
256x256) within seconds; ``scripts/bench_aupro.py`` measures it.

Regions are 8-connected components of each mask, as in both reference implementations.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc

from .classification import MetricInputError, _masks_and_maps

AUPRO_VARIANTS = ("mvtec", "clip_ad")

# Connect the 8 neighbours inside one image, never across images of the stack.
_IN_PLANE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8_CONNECTIVITY[1] = True


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected anomalous regions of every mask.

    Args:
        masks: [N, H, W] int8 in {0, 1}.
    Returns:
        (region id per pixel [N*H*W] int64, 0 = normal; region area [R + 1], area[0] = inf).
    """
    regions, region_count = ndimage.label(masks, structure=_IN_PLANE_8_CONNECTIVITY)
    if region_count == 0:
        raise MetricInputError("aupro: the masks contain no anomalous region; PRO is undefined without one")
    regions = regions.reshape(-1)
    region_area = np.bincount(regions).astype(np.float64)
    if region_area[0] == 0:
        raise MetricInputError("aupro: every pixel is anomalous; the false-positive rate is undefined")
    region_area[0] = np.inf  # normal pixels weigh nothing on the PRO axis
    return regions, region_area


def _pro_weights(regions: np.ndarray, region_area: np.ndarray) -> np.ndarray:
    """Weight of each pixel on the PRO axis: 1 / (#regions * area of its region), 0 if normal."""
    return 1.0 / ((region_area.size - 1) * region_area[regions])


def _sort_descending_with_regions(scores: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort scores from high to low, carrying each pixel's region id along.

    numpy's value sort is SIMD-accelerated and ~20x faster than ``argsort`` on 10^8
    elements, so score and region id are packed into one uint64 (an order-preserving
    32-bit key of the float32 score above, the region id below) and sorted as values.

    Returns:
        (score keys [P] uint64 — equal keys mean equal scores —, region ids [P] int64).
    """
    # Scores are compared in float32 (ties closer than ~1e-7 relative merge); "+ 0" maps -0.0 to +0.0.
    bits = (np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0)).view(np.uint32)
    # IEEE-754 order trick: flip all bits of negatives, set the sign bit of positives.
    negative = bits >> np.uint32(31) == 1
    key = np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    if regions.max() >= 2**32:
        raise MetricInputError("aupro: more than 2^32 regions")
    packed = np.sort((key << np.uint64(32)) | regions.astype(np.uint64))[::-1]
    return packed >> np.uint64(32), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _area_up_to(fprs: np.ndarray, pros: np.ndarray, limit: float) -> float:
    """Trapezoid area under (fprs, pros) from fpr=0 to ``limit``; fprs ascending, starting at 0."""
    inside = fprs <= limit
    x, y = fprs[inside], pros[inside]
    if x[-1] < limit and inside.sum() < fprs.size:
        # Interpolate the curve where it crosses the limit, as the official code does.
        nxt = inside.sum()
        x0, x1, y0, y1 = fprs[nxt - 1], fprs[nxt], pros[nxt - 1], pros[nxt]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x, y = np.append(x, limit), np.append(y, y_limit)
    return float(np.trapezoid(y, x))


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve over every distinct score of ``maps``.

    Args:
        masks: [N, H, W] binary ground truth (numpy or torch).
        maps: [N, H, W] anomaly maps, higher = more anomalous.
    Returns:
        (fprs, pros), both ascending from (0, 0) to (1, 1).
    """
    masks, maps = _masks_and_maps(masks, maps)
    regions, region_area = _label_regions(masks)
    score_keys, sorted_regions = _sort_descending_with_regions(maps.reshape(-1), regions)
    is_normal = sorted_regions == 0
    fprs = np.cumsum(is_normal, dtype=np.float64) / is_normal.sum()
    pros = np.cumsum(_pro_weights(sorted_regions, region_area))
    # A threshold sits between distinct scores: keep the last pixel of each run of ties.
    last_of_tie = np.append(score_keys[1:] != score_keys[:-1], True)
    fprs = np.concatenate(([0.0], fprs[last_of_tie]))
    pros = np.concatenate(([0.0], np.minimum(pros[last_of_tie], 1.0)))
    return fprs, pros


def _aupro_mvtec(masks, maps, fpr_limit: float) -> float:
    fprs, pros = pro_curve(masks, maps)
    return _area_up_to(fprs, pros, fpr_limit) / fpr_limit


def _aupro_clip_ad(masks, maps, fpr_limit: float, max_step: int) -> float:
    masks, maps = _masks_and_maps(masks, maps)
    regions, region_area = _label_regions(masks)
    pro_weight = _pro_weights(regions, region_area)
    is_normal = regions == 0
    scores = maps.reshape(-1)
    # Thresholds in the maps' own dtype, as the reference code computes them (float32 maps give
    # float32 thresholds); float64 arithmetic would move the result in the 5th decimal.
    low, high = scores.min(), scores.max()
    if not high > low:
        raise MetricInputError("aupro: the anomaly maps are constant; no threshold separates anything")
    thresholds = np.arange(low, high, (high - low) / max_step)
    # bin b = number of thresholds strictly below the score: the pixel is positive
    # (score > threshold j) exactly for j < b.
    bins = np.searchsorted(thresholds, scores, side="left")
    n_bins = thresholds.size + 1
    pro_hist = np.bincount(bins, weights=pro_weight, minlength=n_bins)
    fpr_hist = np.bincount(bins[is_normal], minlength=n_bins) / is_normal.sum()
    # Value at threshold j = sum of the histogram over bins b > j.
    pros = np.cumsum(pro_hist[::-1])[::-1][1:]
    fprs = np.cumsum(fpr_hist[::-1])[::-1][1:]
    keep = fprs < fpr_limit
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size < 2 or fprs.max() == fprs.min():
        warnings.warn(
            f"aupro (clip_ad): fewer than two distinct thresholds reach FPR < {fpr_limit}; returning NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        return float("nan")
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros))


def aupro(masks, maps, fpr_limit: float = 0.3, variant: str = "mvtec", max_step: int = 200) -> float:
    """Normalized area under the PRO curve up to ``fpr_limit``.

    Args:
        masks: [N, H, W] binary ground-truth masks (numpy or torch).
        maps: [N, H, W] anomaly maps at the same resolution.
        fpr_limit: upper end of the integration on the FPR axis (0.3 in every paper here).
        variant: ``"mvtec"`` (official, default) or ``"clip_ad"`` (200-threshold recipe).
        max_step: number of thresholds of the ``clip_ad`` recipe.
    Returns:
        A float in [0, 1] (NaN from ``clip_ad`` when its curve degenerates, with a warning).
    """
    if variant not in AUPRO_VARIANTS:
        raise MetricInputError(f"aupro: unknown variant {variant!r}; choose one of {AUPRO_VARIANTS}")
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricInputError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    if variant == "mvtec":
        return _aupro_mvtec(masks, maps, fpr_limit)
    return _aupro_clip_ad(masks, maps, fpr_limit, max_step)
