"""AUPRO: hand-computed cases, and both recipes against brute-force reference loops."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc

from clipad_lib.metrics import MetricInputError, aupro, pro_curve

EIGHT = np.ones((3, 3), bool)


def test_single_region_hand_computed():
    # 2 anomalous pixels (one region), 6 normal. Curve: (0, .5) (1/6, .5) (2/6, .5) (2/6, 1) ... (1, 1).
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 0]]])
    maps = np.array([[[0.9, 0.5, 0.7, 0.1], [0.2, 0.3, 0.4, 0.6]]])
    fprs, pros = pro_curve(masks, maps)
    np.testing.assert_allclose(fprs, [0, 0, 1 / 6, 2 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(pros, [0, 0.5, 0.5, 0.5, 1, 1, 1, 1, 1])
    # Area to FPR 0.3: 0.5 * 0.3 = 0.15, normalized by 0.3 -> 0.5.
    assert aupro(masks, maps) == pytest.approx(0.5)
    # Area to FPR 1: 0.5 * 2/6 + 1 * 4/6.
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5 / 3 + 2 / 3)


def test_regions_weigh_equally_whatever_their_size():
    # A 1-pixel region found first, a 3-pixel region after: PRO is 1/2 in between, not 1/4.
    masks = np.zeros((1, 3, 6), int)
    masks[0, 0, 0] = 1
    masks[0, :, 5] = 1
    maps = np.zeros((1, 3, 6))
    maps[0, 0, 0] = 1.0
    maps[0, :, 5] = 0.5
    fprs, pros = pro_curve(masks, maps)
    np.testing.assert_allclose(fprs[:3], [0, 0, 0])
    np.testing.assert_allclose(pros[:3], [0, 0.5, 1.0])
    assert aupro(masks, maps) == pytest.approx(1.0)


def test_regions_are_eight_connected_within_an_image_only():
    # A diagonal pair is one region (8-connectivity): 2 regions in all, not 3.
    masks = np.zeros((2, 4, 4), int)
    masks[0, 0, 0] = masks[0, 1, 1] = 1
    masks[0, 3, 3] = 1
    maps = np.zeros((2, 4, 4))
    maps[0, 3, 3] = 1.0
    _, pros = pro_curve(masks, maps)
    assert pros[1] == pytest.approx(0.5)
    # Touching pixels in consecutive images of the stack are separate regions.
    masks = np.zeros((2, 2, 2), int)
    masks[0, 1, 0] = masks[1, 0, 0] = 1
    maps = np.zeros((2, 2, 2))
    maps[0, 1, 0] = 1.0
    _, pros = pro_curve(masks, maps)
    assert pros[1] == pytest.approx(0.5)


def _reference_curve(masks, maps):
    """Brute force: one pass over all pixels for every distinct threshold."""
    labels = [ndimage.label(m, structure=EIGHT)[0] for m in masks]
    regions = [(i, labels[i] == r) for i in range(len(masks)) for r in range(1, labels[i].max() + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        positive = maps >= threshold
        fprs.append((positive & normal).sum() / normal.sum())
        pros.append(np.mean([positive[i][region].mean() for i, region in regions]))
    return np.array(fprs), np.array(pros)


def _area_to_limit(fprs, pros, limit):
    """The official way: trapezoids on the curve cut at the limit (interpolated), over the limit."""
    keep = fprs <= limit
    x, y = fprs[keep], pros[keep]
    if x[-1] < limit:
        j = keep.sum()
        y_at = pros[j - 1] + (pros[j] - pros[j - 1]) * (limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1])
        x, y = np.append(x, limit), np.append(y, y_at)
    return np.trapezoid(y, x) / limit


def _reference_mvtec(masks, maps, limit):
    return _area_to_limit(*_reference_curve(masks, maps), limit)


def _reference_clip_ad(masks, maps, limit=0.3, max_step=200):
    """The 200-threshold recipe, written as the CLIP-AD code bases loop it."""
    labels = [ndimage.label(m, structure=EIGHT)[0] for m in masks]
    low, high = maps.min(), maps.max()
    fprs, pros = [], []
    for threshold in np.arange(low, high, (high - low) / max_step):
        binary = maps > threshold
        overlaps = [binary[i][labels[i] == r].mean() for i in range(len(masks)) for r in range(1, labels[i].max() + 1)]
        pros.append(np.mean(overlaps))
        fprs.append((binary & (masks == 0)).sum() / (masks == 0).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 24, 24), int)
    for i in range(0, 6, 2):
        cy, cx, r = rng.integers(5, 19), rng.integers(5, 19), rng.integers(2, 5)
        yy, xx = np.mgrid[:24, :24]
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    masks[4, 0:2, 20:23] = 1  # a second region in one image
    maps = np.round(rng.random((6, 24, 24)) * 0.6 + masks * 0.5, 3).astype(np.float32)  # rounding makes ties
    return masks, maps


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_mvtec_recipe_matches_brute_force(blobs, limit):
    masks, maps = blobs
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_reference_mvtec(masks, maps, limit), abs=1e-9)


def test_clip_ad_recipe_matches_brute_force(blobs):
    masks, maps = blobs
    assert aupro(masks, maps, variant="clip_ad") == pytest.approx(_reference_clip_ad(masks, maps), abs=1e-9)


def test_the_two_recipes_differ(blobs):
    masks, maps = blobs
    assert aupro(masks, maps, variant="mvtec") != pytest.approx(aupro(masks, maps, variant="clip_ad"), abs=1e-4)


def test_perfect_maps_score_one_in_both_recipes(blobs):
    masks, _ = blobs
    maps = masks + np.random.default_rng(4).random(masks.shape) * 0.1
    assert aupro(masks, maps) == pytest.approx(1.0)
    assert aupro(masks, maps, variant="clip_ad") == pytest.approx(1.0)


def test_negative_scores_keep_their_order():
    masks = np.array([[[1, 0, 0, 0]]])
    maps = np.array([[[-0.1, -0.5, -0.2, -3.0]]])
    fprs, pros = pro_curve(masks, maps)
    assert pros[1] == 1.0 and fprs[1] == 0.0


def test_bad_pro_inputs():
    with pytest.raises(MetricInputError, match="no anomalous region"):
        aupro(np.zeros((1, 4, 4)), np.random.rand(1, 4, 4))
    with pytest.raises(MetricInputError, match="unknown variant"):
        aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4), variant="other")
    with pytest.raises(MetricInputError, match="fpr_limit"):
        aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4), fpr_limit=0)
    with pytest.raises(MetricInputError, match="every pixel is anomalous"):
        aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4))
    with pytest.raises(MetricInputError, match="constant"):
        aupro(np.eye(4)[None], np.zeros((1, 4, 4)), variant="clip_ad")


@pytest.mark.parametrize("decimals", [1, 2, 6])
@pytest.mark.parametrize("limit", [0.01, 0.1, 0.3, 0.7, 1.0])
def test_aupro_equals_the_full_curve_whatever_the_ties(decimals, limit):
    # Coarse rounding makes tie groups of thousands of pixels, mixing normal and anomalous ones,
    # so the FPR limit cuts through a tie group and anomalous pixels tie with normal ones.
    rng = np.random.default_rng(decimals)
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[0, 4:12, 4:12] = masks[3, 20:30, 2:6] = masks[3, 0, 0] = masks[6, 10:25, 10:25] = 1
    maps = np.round(rng.random(masks.shape) * 0.7 + 0.4 * masks, decimals).astype(np.float32)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_area_to_limit(*pro_curve(masks, maps), limit), abs=1e-9)


def test_aupro_keeps_memory_below_one_float64_copy_of_the_maps():
    import tracemalloc

    rng = np.random.default_rng(0)
    masks = np.zeros((64, 96, 96), np.uint8)
    masks[::2, 30:50, 30:50] = 1
    maps = (rng.random(masks.shape, dtype=np.float32) + np.float32(0.5) * masks).astype(np.float32)
    for variant in ("mvtec", "clip_ad"):
        tracemalloc.start()
        aupro(masks, maps, variant=variant)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * masks.size, f"{variant}: {peak / masks.size:.1f} bytes per pixel"


@pytest.mark.parametrize("variant", ["mvtec", "clip_ad"])
def test_tensors_on_a_device_are_ranked_there_with_the_same_value(blobs, variant, monkeypatch):
    # CI has no GPU: the device path (torch sort and searchsorted) is forced on CPU tensors.
    import torch

    from clipad_lib.metrics import pro

    masks, maps = blobs
    expected = aupro(masks, maps, variant=variant)
    monkeypatch.setattr(pro, "_ranks_on_device", lambda maps: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True), raising=False)
    value = aupro(torch.from_numpy(masks), torch.from_numpy(maps), variant=variant)
    assert value == pytest.approx(expected, abs=1e-9)
