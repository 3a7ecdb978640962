"""Synthetic anomalies on normal images, for methods that train without real defects.

* **Random perturbation** (CLIP-FSAC++ §III-C, after CDO [47]): some square regions are replaced
  by random values from a Gaussian. The official loader (Jay-zzcoder/clip-fsac-,
  ``data/anomaly_image_generate.py``) draws 1–4 regions with half-sides between 1/40 and 1/10
  of the image side; those bounds are kept, the values are Gaussian as the paper says.
* **NSA** (Schlüter et al., ECCV 2022): a patch of the same image, with Gamma-distributed
  half-widths, randomly resized and moved, is blended in with Poisson image editing; a second
  patch follows with probability 1/2. Defaults are the VisA arguments of the official
  CLIP-FSAC++ loader (``visa_args`` in ``data/mvtecdataset.py``).

Every anomaly comes with the mask of exactly the pixels it changed. Draws are seeded per
(seed, index), so the j-th anomaly of an image is the same however many are asked for.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .poisson import poisson_blend

MAX_ATTEMPTS = 20  # draws tried before giving up on an image that no anomaly changes


class SynthesisError(ValueError):
    """An image the synthesizer cannot work on (wrong type or shape, or never changed)."""


@dataclass(frozen=True)
class SyntheticAnomaly:
    """image: [H, W, 3] uint8; mask: [H, W] bool, True exactly where ``image`` differs from the original."""

    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class RandomPerturbationConfig:
    min_regions: int = 1                 # official anomaly_image_generate.py: randint(1, 5)
    max_regions: int = 4
    min_half_side: float = 1 / 40        # official: randint(h // 40, h // 10) half-sides
    max_half_side: float = 1 / 10
    noise_mean: float = 0.5              # ours: the paper says "Gaussian" and gives no parameters;
    noise_std: float = 0.25              # mean/std in [0, 1] intensity, clipped to the valid range

    def __post_init__(self):
        if not 1 <= self.min_regions <= self.max_regions:
            raise ValueError(f"need 1 <= min_regions <= max_regions, got {self.min_regions}, {self.max_regions}")
        if not 0 < self.min_half_side <= self.max_half_side < 0.5:
            raise ValueError("need 0 < min_half_side <= max_half_side < 0.5 (fractions of the image side)")


@dataclass(frozen=True)
class NSAConfig:
    width_bounds: tuple[float, float] = (0.03, 0.4)   # visa_args width_bounds_pct (half-width, fraction of side)
    gamma_params: tuple[float, float, float] = (2.0, 0.05, 0.03)  # visa_args: (shape, scale, offset)
    resize_bounds: tuple[float, float] = (0.5, 2.0)   # visa_args resize_bounds
    num_patches: int = 2                              # visa_args num_patches (each after the first: p = 1/2)

    def __post_init__(self):
        low, high = self.width_bounds
        if not 0 < low < high < 0.5:
            raise ValueError(f"width_bounds must satisfy 0 < low < high < 0.5, got {self.width_bounds}")
        if self.num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {self.num_patches}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        found = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise SynthesisError(f"expected an [H, W, 3] uint8 image, got {found}")
    if min(image.shape[:2]) < 16:
        raise SynthesisError(f"images must be at least 16x16 pixels to place anomalies, got {image.shape[:2]}")


def _with_mask(original: np.ndarray, changed: np.ndarray) -> SyntheticAnomaly:
    return SyntheticAnomaly(image=changed, mask=(changed != original).any(axis=-1))


def random_perturbation(image: np.ndarray, rng: np.random.Generator,
                        config: RandomPerturbationConfig = RandomPerturbationConfig()) -> SyntheticAnomaly:
    """Replace 1–4 random squares of ``image`` [H, W, 3] uint8 by clipped Gaussian noise."""
    _check_image(image)
    height, width = image.shape[:2]
    side = min(height, width)
    low = max(1, int(side * config.min_half_side))
    high = max(low, int(side * config.max_half_side))
    result = image.astype(np.float64) / 255.0
    for _ in range(rng.integers(config.min_regions, config.max_regions + 1)):
        half = int(rng.integers(low, high + 1))
        top = int(rng.integers(0, height - 2 * half + 1))
        left = int(rng.integers(0, width - 2 * half + 1))
        noise = rng.normal(config.noise_mean, config.noise_std, size=(2 * half, 2 * half, 3))
        result[top:top + 2 * half, left:left + 2 * half] = noise
    changed = np.clip(np.rint(result * 255.0), 0, 255).astype(np.uint8)
    return _with_mask(image, changed)


def _nsa_patch(canvas: np.ndarray, source_image: np.ndarray, rng: np.random.Generator, config: NSAConfig) -> None:
    """Blend one resized, shifted patch of ``source_image`` into ``canvas`` [H, W, 3] float in place."""
    height, width = canvas.shape[:2]
    min_h, max_h = round(config.width_bounds[0] * height), round(config.width_bounds[1] * height)
    min_w, max_w = round(config.width_bounds[0] * width), round(config.width_bounds[1] * width)
    shape, scale, offset = config.gamma_params
    half_h = int(np.clip((offset + rng.gamma(shape, scale)) * height, min_h, max_h))
    half_w = int(np.clip((offset + rng.gamma(shape, scale)) * width, min_w, max_w))
    center_y = int(rng.integers(min_h, height - min_h))
    center_x = int(rng.integers(min_w, width - min_w))
    top, bottom = max(center_y - half_h, 0), min(center_y + half_h, height)
    left, right = max(center_x - half_w, 0), min(center_x + half_w, width)
    patch = source_image[top:bottom, left:right]
    patch_h, patch_w = patch.shape[:2]
    # Resample at a random size, keeping the aspect ratio (the official bounds re-used as sizes).
    factor = float(np.clip(rng.normal(1.0, 0.5), *config.resize_bounds))
    new_h = int(np.clip(factor * patch_h, min_h, max_h))
    new_w = int(np.clip(int(new_h / patch_h * patch_w), min_w, max_w))
    new_h = int(np.clip(int(new_w / patch_w * patch_h), min_h, max_h))
    new_h, new_w = max(new_h, 3), max(new_w, 3)
    patch = np.asarray(Image.fromarray(patch).resize((new_w, new_h), Image.BILINEAR), dtype=np.float64)
    # A new location for it, fully inside the image.
    dest_y = int(rng.integers(new_h // 2 + 1, height - new_h // 2 - 1))
    dest_x = int(rng.integers(new_w // 2 + 1, width - new_w // 2 - 1))
    y0, x0 = dest_y - new_h // 2, dest_x - new_w // 2
    region = canvas[y0:y0 + new_h, x0:x0 + new_w]
    canvas[y0:y0 + new_h, x0:x0 + new_w] = poisson_blend(region, patch)


def natural_synthetic_anomaly(image: np.ndarray, rng: np.random.Generator,
                              config: NSAConfig = NSAConfig()) -> SyntheticAnomaly:
    """NSA on ``image`` [H, W, 3] uint8: patches of the image itself, Poisson-blended elsewhere."""
    _check_image(image)
    canvas = image.astype(np.float64)
    for index in range(config.num_patches):
        if index == 0 or rng.integers(2) > 0:
            _nsa_patch(canvas, image, rng, config)
    changed = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return _with_mask(image, changed)


SYNTHESIZERS: dict[str, Callable[[np.ndarray, np.random.Generator], SyntheticAnomaly]] = {
    "random_perturbation": random_perturbation,
    "nsa": natural_synthetic_anomaly,
}


def synthesize_anomalies(image: np.ndarray, method: str, count: int, seed: int | tuple[int, ...]) -> list[SyntheticAnomaly]:
    """``count`` anomalies of ``image`` [H, W, 3] uint8 by ``method`` ("random_perturbation" | "nsa").

    The j-th anomaly draws from ``numpy.random.default_rng([*seed, j, attempt])`` (``seed`` an int
    or a tuple of ints, e.g. (run seed, image index)): the same seed
    gives the same anomalies, and asking for more keeps the first ones. A draw that changes no
    pixel (a patch blended onto a flat area) is redrawn; an image no draw changes is an error.
    """
    if method not in SYNTHESIZERS:
        raise SynthesisError(f"unknown anomaly synthesis {method!r}; choose one of {sorted(SYNTHESIZERS)}")
    if count < 1:
        raise SynthesisError(f"count must be >= 1, got {count}")
    synthesizer = SYNTHESIZERS[method]
    entropy = [int(part) for part in (seed if isinstance(seed, tuple) else (seed,))]
    anomalies = []
    for index in range(count):
        for attempt in range(MAX_ATTEMPTS):
            anomaly = synthesizer(image, np.random.default_rng([*entropy, index, attempt]))
            if anomaly.mask.any():
                anomalies.append(anomaly)
                break
        else:
            raise SynthesisError(f"{method} changed no pixel of this image in {MAX_ATTEMPTS} draws; is it uniform?")
    return anomalies


def synthesize_shot_anomalies(shots: np.ndarray, method: str, per_shot: int, seed: int) -> list[list[SyntheticAnomaly]]:
    """``per_shot`` anomalies of each of the k-shot images [K, H, W, 3] uint8, the i-th shot's seeded
    by (``seed``, i): what the few-shot methods that train on synthetic anomalies draw."""
    return [synthesize_anomalies(image, method, per_shot, (seed, index)) for index, image in enumerate(shots)]


def synthesis_fingerprint() -> str:
    """A digest of this package's source: cached anomalies are stale once the synthesis code changes."""
    digest = hashlib.blake2b(digest_size=12)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
