"""Synthetic anomalies: exact masks, seeding, Poisson blending without seams, clear errors."""
import numpy as np
import pytest

from clipad_lib.synthesis import (SynthesisError, natural_synthetic_anomaly, poisson_blend, random_perturbation,
                                  synthesize_anomalies)


def _textured(size=96, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 100 + 60 * np.sin(x / 5.0)[..., None] + 40 * np.cos(y / 7.0)[..., None] * np.array([1.0, 0.5, -0.5])
    return np.clip(base + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["random_perturbation", "nsa"])
def test_masks_are_exactly_the_changed_pixels_and_seeds_repeat(method):
    image = _textured()
    first = synthesize_anomalies(image, method, count=6, seed=3)
    again = synthesize_anomalies(image, method, count=8, seed=3)  # asking for more keeps the first ones
    other = synthesize_anomalies(image, method, count=6, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(first, other))
    for anomaly in first:
        assert anomaly.image.dtype == np.uint8 and anomaly.image.shape == image.shape
        np.testing.assert_array_equal(anomaly.mask, (anomaly.image != image).any(axis=-1))
        assert anomaly.mask.any()
    assert len({a.image.tobytes() for a in first}) == len(first)  # several different anomalies per image


def test_random_perturbation_changes_squares_within_the_official_size_bounds():
    image = np.full((80, 80, 3), 128, np.uint8)
    for seed in range(10):
        anomaly = random_perturbation(image, np.random.default_rng(seed))
        rows, cols = np.nonzero(anomaly.mask)
        assert anomaly.mask.mean() <= 4 * (2 * 8) ** 2 / 80 ** 2  # at most 4 squares of side 2 * 80 // 10
        assert rows.size > 0


def test_poisson_blend_keeps_the_border_and_the_source_laplacian():
    rng = np.random.default_rng(0)
    destination, source = rng.uniform(0, 255, (12, 17, 3)), rng.uniform(0, 255, (12, 17, 3))
    blended = poisson_blend(destination, source)

    def laplacian(x):
        return 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]

    np.testing.assert_allclose(laplacian(blended), laplacian(source), atol=1e-9)
    for edge in (blended[0], blended[-1], blended[:, 0], blended[:, -1]):
        assert edge.shape[-1] == 3
    np.testing.assert_array_equal(blended[0], destination[0])
    np.testing.assert_array_equal(blended[:, -1], destination[:, -1])
    # A constant offset between source and destination is absorbed entirely: no seam remains.
    flat = np.full((10, 10, 3), 50.0)
    np.testing.assert_allclose(poisson_blend(flat, flat + 100.0), flat, atol=1e-9)


def test_nsa_blends_without_seams_where_a_hard_paste_has_them():
    """Across the border of the changed region, NSA's intensity jump is far smaller than a hard
    paste of the same (brightened) patch: Poisson editing matches the destination at the border."""
    image = _textured(128, seed=1)
    bright = np.clip(image.astype(int) + 80, 0, 255).astype(np.uint8)
    top, left, size = 40, 50, 30
    hard = image.astype(float).copy()
    hard[top:top + size, left:left + size] = bright[top:top + size, left:left + size]
    soft = poisson_blend(image[top:top + size, left:left + size].astype(float),
                         bright[top:top + size, left:left + size].astype(float))
    blended = image.astype(float).copy()
    blended[top:top + size, left:left + size] = soft

    def border_jump(result):
        inside = result[top + 1, left + 1:left + size - 1]     # first row inside the region
        outside = result[top - 1, left + 1:left + size - 1]    # the row above it
        return np.abs(inside - outside).mean()

    assert border_jump(hard) > 60
    assert border_jump(blended) < 0.25 * border_jump(hard)
    # The real NSA on a two-tone image (halves 160 grey levels apart, patches moved between them):
    # where a changed pixel meets an unchanged one, the step stays at the image's own texture level.
    two_tone = _textured(128, seed=2).astype(int) // 4
    two_tone[:, 64:] += 160
    two_tone = two_tone.astype(np.uint8)
    own_step = np.abs(np.diff(two_tone[:, :60].astype(int), axis=1)).mean()
    for seed in range(5):
        anomaly = natural_synthetic_anomaly(two_tone, np.random.default_rng(seed))
        out, mask = anomaly.image.astype(int), anomaly.mask
        steps = [np.abs(out[1:] - out[:-1]).max(-1)[mask[1:] != mask[:-1]],
                 np.abs(out[:, 1:] - out[:, :-1]).max(-1)[mask[:, 1:] != mask[:, :-1]]]
        assert np.concatenate(steps).mean() < 4 * own_step + 8


def test_bad_inputs_fail_clearly():
    with pytest.raises(SynthesisError, match="uint8"):
        synthesize_anomalies(np.zeros((64, 64, 3), np.float32), "nsa", 1, 0)
    with pytest.raises(SynthesisError, match="unknown anomaly synthesis"):
        synthesize_anomalies(_textured(), "perlin", 1, 0)
    with pytest.raises(SynthesisError, match="changed no pixel"):
        synthesize_anomalies(np.full((64, 64, 3), 90, np.uint8), "nsa", 1, 0)  # a flat image: NSA is a no-op
