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
``aupro`` never builds the curve. It sorts the normal pixels' scores once (numpy's SIMD value
sort, the only step that touches every pixel) and places each anomalous pixel among them by
binary search; anomalous pixels are a few percent of a dataset, so everything after the sort is
O(#anomalous):

* ``mvtec``: lay the normal pixels out on the FPR axis from the highest score down, each 1/n
  wide. Over the stretch of normal pixels that share one score, the curve rises linearly by the
  PRO weight of the anomalous pixels at exactly that score, starting from the weight of those
  above it. So the area up to the limit is a sum over anomalous pixels: each weighs
  ``(#normals above the limit's tie group that score below it)`` plus half of those that tie
  with it, plus the one tie group the limit cuts, integrated exactly. Equal to the trapezoid
  rule on the full curve (``pro_curve``) with the interpolated end point, to float rounding.
* ``clip_ad``: FPR and PRO at each of the 200 thresholds are two binary searches each.

On an MVTec-sized input (1725 maps of 256x256) this is the cost of one sort;
``scripts/bench_aupro.py`` measures it against anomalib's implementation. Given CUDA tensors,
the sort and the searches run on their device (connected components stay on the CPU: the masks
are small and scipy labels them once).

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


def _validated_torch(masks, maps):
    """Check CUDA tensors without moving the maps to the host. Returns (int8 numpy masks, maps)."""
    import torch  # only reached for tensors, so torch is importable

    if masks.ndim != 3 or maps.shape != masks.shape:
        raise MetricInputError(
            f"aupro expects masks and maps of the same shape [N, H, W], got {tuple(masks.shape)} and {tuple(maps.shape)}; "
            "resize the maps to the mask resolution (bilinear) before scoring"
        )
    if not bool(torch.isfinite(maps).all()):
        raise MetricInputError("anomaly maps contain NaN or infinity")
    host_masks = (masks > 0.5).to(torch.int8).cpu().numpy() if hasattr(masks, "detach") else (np.asarray(masks) > 0.5).astype(np.int8)
    return host_masks, maps


def _ranks_on_device(maps) -> bool:
    """Rank on the maps' device only for CUDA tensors: torch's CPU sort is ~15x slower than numpy's."""
    return bool(getattr(maps, "is_cuda", False))


class _RankedPixels:
    """Normal pixels' scores sorted ascending, and the anomalous pixels with their PRO weights.

    Attributes:
        normal_count: n, the number of normal pixels.
        score_dtype: the numpy dtype the scores are compared in (float32, or the maps' own).
        anomalous_scores: [A] scores of the anomalous pixels, ascending (the maps' device and dtype).
        anomalous_weights: [A] float64 numpy, 1 / (#regions * area of the pixel's region), same order.
    """

    def __init__(self, masks, maps, dtype) -> None:
        on_device = _ranks_on_device(maps)
        if on_device:
            import torch

            masks, maps = _validated_torch(masks, maps)
            self._torch = torch
            maps = maps.to(getattr(torch, np.dtype(dtype).name) if dtype is not None else maps.dtype)
        else:
            self._torch = None
            masks, maps = _masks_and_maps(masks, maps)
            maps = np.asarray(maps, dtype=dtype if dtype is not None else (maps.dtype if maps.dtype.kind == "f" else np.float64))
        self.score_dtype = np.dtype(str(maps.dtype).split(".")[-1])  # a torch dtype names its numpy twin
        anomalous_index, region_of_pixel, region_area = _anomalous_pixels(masks)
        self.anomalous_weights = 1.0 / (region_area.size * region_area[region_of_pixel])
        flat_maps = maps.reshape(-1)
        anomalous_count = anomalous_index.size
        self.normal_count = flat_maps.shape[0] - anomalous_count
        if on_device:
            index = self._torch.from_numpy(anomalous_index).to(flat_maps.device)
            self.anomalous_scores, order = self._torch.sort(flat_maps[index])
            self.anomalous_weights = self.anomalous_weights[order.cpu().numpy()]
            # Anomalous pixels become -inf, sort to the front, and are cut off.
            masked = flat_maps.clone()
            masked[index] = -float("inf")
            self._sorted_normals = self._torch.sort(masked).values[anomalous_count:]
        else:
            scores = flat_maps[anomalous_index]
            # Ascending, so that the binary searches below walk the sorted normals in order.
            order = np.argsort(scores, kind="stable")
            self.anomalous_scores, self.anomalous_weights = scores[order], self.anomalous_weights[order]
            masked = np.where(masks.reshape(-1).view(bool), flat_maps.dtype.type(-np.inf), flat_maps)
            masked.sort()  # in place: one copy of the maps, no index array beside it
            self._sorted_normals = masked[anomalous_count:]

    def normals_at_or_above(self, values, strictly: bool = False) -> np.ndarray:
        """For each value, how many normal pixels score >= it (> it with ``strictly``). int64 numpy."""
        side = "right" if strictly else "left"
        if self._torch is not None:
            if not hasattr(values, "is_cuda"):
                values = self._torch.as_tensor(_in_dtype(values, self.score_dtype, strictly),
                                               device=self._sorted_normals.device)
            below = self._torch.searchsorted(self._sorted_normals, values.contiguous(), side=side).cpu().numpy()
        else:
            below = np.searchsorted(self._sorted_normals, _in_dtype(values, self.score_dtype, strictly), side=side)
        return self.normal_count - below.astype(np.int64)

    def normal_score_at_rank(self, rank: int):
        """The score of the normal pixel ``rank`` places below the highest (0 = the highest)."""
        value = self._sorted_normals[self.normal_count - 1 - rank]
        return value.item() if self._torch is not None else value

    def host_anomalous_scores(self) -> np.ndarray:
        return self.anomalous_scores if self._torch is None else self.anomalous_scores.cpu().numpy()

    def score_range(self) -> tuple[float, float]:
        low = min(self._sorted_normals[0].item(), self.anomalous_scores.min().item())
        high = max(self._sorted_normals[-1].item(), self.anomalous_scores.max().item())
        return low, high


def _in_dtype(values, dtype, strictly: bool) -> np.ndarray:
    """``values`` in the sorted scores' dtype, rounded so that comparisons do not change.

    A float32 score x is > v exactly when it is > the largest float32 <= v, and >= v exactly when
    it is >= the smallest float32 >= v. Searching in the scores' own dtype spares a float64 copy
    of every pixel (numpy would promote the sorted array to the values' dtype).
    """
    values = np.asarray(values)
    rounded = values.astype(dtype)
    if strictly:
        off = rounded > values
        rounded[off] = np.nextafter(rounded[off], dtype.type(-np.inf))
    else:
        off = rounded < values
        rounded[off] = np.nextafter(rounded[off], dtype.type(np.inf))
    return rounded


def _anomalous_pixels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices, region ids (0-based) and region areas of the anomalous pixels of [N, H, W] int8 masks."""
    # Only images with an anomaly are labelled (a third of MVTec AD's test set); their pixels keep
    # the order of ``flatnonzero`` over the whole stack.
    with_anomaly = masks[masks.any(axis=(1, 2))]
    regions, region_count = ndimage.label(with_anomaly, structure=_IN_PLANE_8_CONNECTIVITY)
    if region_count == 0:
        raise MetricInputError("aupro: the masks contain no anomalous region; PRO is undefined without one")
    anomalous_index = np.flatnonzero(masks)
    if anomalous_index.size == masks.size:
        raise MetricInputError("aupro: every pixel is anomalous; the false-positive rate is undefined")
    region_of_pixel = regions.reshape(-1)[np.flatnonzero(with_anomaly)].astype(np.int64) - 1
    return anomalous_index, region_of_pixel, np.bincount(region_of_pixel, minlength=region_count).astype(np.float64)


def _aupro_mvtec(masks, maps, fpr_limit: float) -> float:
    pixels = _RankedPixels(masks, maps, np.float32)  # scores compared in float32, as ``pro_curve`` does
    n, weights = pixels.normal_count, pixels.anomalous_weights
    # Normal pixels are laid out on the FPR axis from the highest score down, pixel i on [i, i + 1] / n.
    # An anomalous pixel counts towards PRO from the first normal pixel that scores below it (i >= above)
    # and, linearly over the tie, from the first that scores equal to it (i >= at_or_above).
    at_or_above = pixels.normals_at_or_above(pixels.anomalous_scores)
    above = pixels.normals_at_or_above(pixels.anomalous_scores, strictly=True)
    limit = fpr_limit * n
    # The tie group of normal pixels that the limit falls in: pixels [start, start + size).
    cut_score = pixels.normal_score_at_rank(min(int(limit), n - 1))
    start = int(pixels.normals_at_or_above(np.asarray([cut_score]), strictly=True)[0])
    size = int(pixels.normals_at_or_above(np.asarray([cut_score]))[0]) - start
    # Full pixels before the group: each anomalous pixel adds its weight over every normal pixel
    # that scores below it, and half its weight over those that tie with it.
    full = np.sum(weights * (np.maximum(start - at_or_above, 0) + np.maximum(start - above, 0))) / 2
    # Inside the group the curve rises linearly from ``base`` by ``rise`` over ``size`` pixels.
    base = np.sum(weights[at_or_above <= start])
    rise = np.sum(weights[above <= start]) - base
    width = limit - start
    partial = width * base + rise * width * width / (2 * size)
    return float((full + partial) / n / fpr_limit)


def _aupro_clip_ad(masks, maps, fpr_limit: float, max_step: int) -> float:
    # Thresholds as the reference code computes them: numpy's arange from the maps' float32 min
    # and max gives float64 thresholds, compared with the float32 scores (``_in_dtype`` keeps
    # that comparison exact without a float64 copy of the scores).
    pixels = _RankedPixels(masks, maps, None)
    low, high = pixels.score_range()
    if not high > low:
        raise MetricInputError("aupro: the anomaly maps are constant; no threshold separates anything")
    low, high = np.asarray(low, dtype=pixels.score_dtype), np.asarray(high, dtype=pixels.score_dtype)
    thresholds = np.arange(low, high, (high - low) / max_step)
    # A pixel is positive when its score > threshold.
    fprs = pixels.normals_at_or_above(thresholds, strictly=True) / pixels.normal_count
    anomalous = pixels.host_anomalous_scores()
    weight_from_top = np.concatenate((np.cumsum(pixels.anomalous_weights[::-1])[::-1], [0.0]))
    pros = weight_from_top[np.searchsorted(anomalous, thresholds, side="right")]
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
        maps: [N, H, W] anomaly maps at the same resolution (numpy or torch; CUDA tensors are
            ranked on their device).
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
