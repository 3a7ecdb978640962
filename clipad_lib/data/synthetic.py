"""The embedded default dataset: procedurally generated industrial-style images in MVTec layout.

Eight categories (four textures, four objects), four defect kinds each, pixel masks, a
``train/good`` split for few-shot references and a ``test`` split. Everything is a
deterministic function of the seed; the set is written once into the cache folder
(``$CLIPAD_CACHE/synthetic/...``) and reused. ``data_manifests/synthetic.yaml`` is its
manifest, and ``clipad data verify synthetic`` checks it like any real dataset.

Every defect changes exactly the pixels of its mask (and no pixel outside it), so the masks
are exact ground truth.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .. import paths
from ..io import UMASK

GENERATOR_VERSION = 1
TEXTURES = ("brushed", "checker", "grain", "weave")
OBJECTS = ("hexnut", "pill", "tile", "washer")
CATEGORIES = TEXTURES + OBJECTS
TEXTURE_DEFECTS = ("colour_shift", "hole", "scratch", "stain")
OBJECT_DEFECTS = ("colour_shift", "hole", "missing_part", "scratch")


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of the generated set. The defaults are what ``data_manifests/synthetic.yaml`` declares."""

    image_size: int = 128
    train_normal: int = 20
    test_normal: int = 10
    test_per_defect: int = 4


def defects_of(category: str) -> tuple[str, ...]:
    return TEXTURE_DEFECTS if category in TEXTURES else OBJECT_DEFECTS


# --- normal images -------------------------------------------------------------------------

_BASE_COLOURS = {
    "brushed": (0.62, 0.63, 0.66), "checker": (0.75, 0.70, 0.55), "grain": (0.55, 0.42, 0.30),
    "weave": (0.35, 0.45, 0.60), "hexnut": (0.70, 0.70, 0.72), "pill": (0.85, 0.35, 0.30),
    "tile": (0.30, 0.60, 0.45), "washer": (0.78, 0.68, 0.40),
}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] smooth noise in about [-1, 1] (bicubic upsampling of a coarse grid)."""
    coarse = rng.standard_normal((cells, cells))
    return ndimage.zoom(coarse, size / cells, order=3, mode="wrap")[:size, :size]


def _texture(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    colour = np.array(_BASE_COLOURS[category]) + rng.uniform(-0.03, 0.03, 3)
    if category == "weave":
        angle, period = rng.uniform(-0.1, 0.1), rng.uniform(9, 11)
        u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
        phase = rng.uniform(0, 2 * np.pi, 2)
        pattern = 0.5 + 0.3 * np.sin(2 * np.pi * u / period + phase[0]) * np.sin(2 * np.pi * v / period + phase[1])
    elif category == "checker":
        cell, offset = rng.uniform(14, 18), rng.uniform(0, 16, 2)
        pattern = 0.35 + 0.4 * ((np.floor((xx + offset[0]) / cell) + np.floor((yy + offset[1]) / cell)) % 2)
    elif category == "grain":
        pattern = 0.6 + 0.15 * _smooth_noise(rng, size, 12) + 0.05 * _smooth_noise(rng, size, 48)
    else:  # brushed: horizontal streaks
        streaks = np.repeat(rng.standard_normal((size, 1)), size, axis=1)
        pattern = 0.7 + 0.06 * ndimage.gaussian_filter1d(streaks, 1.0, axis=0) + 0.05 * _smooth_noise(rng, size, 6)
    image = pattern[..., None] * colour[None, None, :] * 1.3
    return image + rng.normal(0, 0.01, image.shape)


def _object_shape(category: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(object image [S, S, 3], object footprint [S, S] bool) on a background."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centre = size / 2 + rng.uniform(-size * 0.04, size * 0.04, 2)
    dy, dx = yy - centre[0], xx - centre[1]
    radius = np.hypot(dx, dy)
    scale = size * rng.uniform(0.30, 0.33)
    colour = np.array(_BASE_COLOURS[category]) + rng.uniform(-0.03, 0.03, 3)
    angle = rng.uniform(0, np.pi)
    if category == "washer":
        footprint = (radius < scale) & (radius > scale * 0.45)
        shade = 0.85 + 0.15 * np.cos(np.arctan2(dy, dx) - angle)
    elif category == "pill":
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        footprint = (u / scale) ** 2 + (v / (scale * 0.5)) ** 2 < 1
        shade = np.where(u > 0, 1.0, 0.55)
    elif category == "hexnut":
        hexagon = np.max([np.abs(dx * np.cos(angle + k * np.pi / 3) + dy * np.sin(angle + k * np.pi / 3))
                          for k in range(3)], axis=0)
        footprint = (hexagon < scale * 0.9) & (radius > scale * 0.4)
        shade = 0.8 + 0.2 * (hexagon / scale)
    else:  # tile: rounded square with a printed cross
        half = scale * 0.85
        corner = np.hypot(np.maximum(np.abs(dx) - half * 0.7, 0), np.maximum(np.abs(dy) - half * 0.7, 0))
        footprint = corner < half * 0.3
        cross = (np.abs(dx) < scale * 0.08) | (np.abs(dy) < scale * 0.08)
        shade = np.where(cross, 0.45, 1.0)
    background = 0.18 + 0.02 * _smooth_noise(rng, size, 4)
    image = np.where(footprint[..., None], shade[..., None] * colour[None, None, :], background[..., None])
    return image + rng.normal(0, 0.01, image.shape), footprint


# --- defects -------------------------------------------------------------------------------

def _random_point(rng: np.random.Generator, footprint: np.ndarray | None, size: int, margin: int) -> np.ndarray:
    if footprint is not None:
        candidates = np.argwhere(ndimage.binary_erosion(footprint, iterations=3))
        return candidates[rng.integers(len(candidates))].astype(np.float32)
    return rng.uniform(margin, size - margin, 2).astype(np.float32)


def _apply_defect(defect: str, image: np.ndarray, footprint: np.ndarray | None, background_colour: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective image, mask): the defect changes exactly the mask's pixels."""
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centre = _random_point(rng, footprint, size, margin=size // 6)
    changed = image.copy()
    if defect == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.4) * size
        direction = np.array([np.sin(angle), np.cos(angle)])
        start = centre - direction * length / 2
        t = np.clip(((yy - start[0]) * direction[0] + (xx - start[1]) * direction[1]) / length, 0, 1)
        distance = np.hypot(yy - (start[0] + t * length * direction[0]), xx - (start[1] + t * length * direction[1]))
        mask = distance < rng.uniform(1.0, 2.0)
        tone = rng.choice([0.25, 1.9])
        changed[mask] = np.clip(image[mask] * tone + (0.15 if tone > 1 else 0.0), 0, 1)
    elif defect == "hole":
        mask = np.hypot(yy - centre[0], xx - centre[1]) < rng.uniform(0.03, 0.07) * size
        changed[mask] = 0.03
    elif defect == "stain":
        mask = np.zeros((size, size), dtype=bool)
        for _ in range(3):
            offset = centre + rng.uniform(-0.05, 0.05, 2) * size
            radii = rng.uniform(0.04, 0.09, 2) * size
            mask |= ((yy - offset[0]) / radii[0]) ** 2 + ((xx - offset[1]) / radii[1]) ** 2 < 1
        stain = np.array([0.30, 0.22, 0.08])
        changed[mask] = 0.35 * image[mask] + 0.65 * stain
    elif defect == "colour_shift":
        radii = rng.uniform(0.07, 0.12, 2) * size
        mask = ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 < 1
        if footprint is not None:
            mask &= footprint
        changed[mask] = np.clip(image[mask][:, [2, 0, 1]] * 1.2 + np.array([0.15, -0.1, 0.1]), 0, 1)
    elif defect == "missing_part":
        angle = rng.uniform(0, 2 * np.pi)
        normal = np.array([np.sin(angle), np.cos(angle)])
        object_centre = np.argwhere(footprint).mean(axis=0)
        reach = np.sqrt(footprint.sum() / np.pi)
        cut = (yy - object_centre[0]) * normal[0] + (xx - object_centre[1]) * normal[1] > reach * rng.uniform(0.35, 0.55)
        mask = cut & footprint
        changed[mask] = background_colour
    else:
        raise ValueError(f"unknown defect {defect!r}")
    # Quantize both and keep only pixels that really differ, so mask == changed pixels exactly.
    before, after = _to_uint8(image), _to_uint8(changed)
    mask &= np.any(before != after, axis=-1)
    after[~mask] = before[~mask]
    return after, mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


# --- writing -------------------------------------------------------------------------------

def _normal_image(category: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    if category in TEXTURES:
        return _texture(category, rng, size), None
    return _object_shape(category, rng, size)


def _generate_into(root: Path, spec: SyntheticSpec, seed: int) -> None:
    size = spec.image_size
    for category_index, category in enumerate(CATEGORIES):
        base = root / category
        train_dir = base / "train" / "good"
        train_dir.mkdir(parents=True)
        for i in range(spec.train_normal):
            image, _ = _normal_image(category, np.random.default_rng([seed, category_index, 0, i]), size)
            Image.fromarray(_to_uint8(image)).save(train_dir / f"{i:03d}.png")
        good_dir = base / "test" / "good"
        good_dir.mkdir(parents=True)
        for i in range(spec.test_normal):
            image, _ = _normal_image(category, np.random.default_rng([seed, category_index, 1, i]), size)
            Image.fromarray(_to_uint8(image)).save(good_dir / f"{i:03d}.png")
        for defect_index, defect in enumerate(defects_of(category)):
            image_dir, mask_dir = base / "test" / defect, base / "ground_truth" / defect
            image_dir.mkdir(parents=True)
            mask_dir.mkdir(parents=True)
            for i in range(spec.test_per_defect):
                rng = np.random.default_rng([seed, category_index, 2, defect_index, i])
                image, footprint = _normal_image(category, rng, size)
                for _attempt in range(10):  # a defect that changed no pixel is redrawn
                    defective, mask = _apply_defect(defect, image, footprint, 0.18, rng)
                    if mask.sum() >= 4:
                        break
                Image.fromarray(defective).save(image_dir / f"{i:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{i:03d}_mask.png")


def synthetic_root(seed: int = 0, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Where the set for this seed and spec lives in the cache (it may not exist yet)."""
    name = (f"v{GENERATOR_VERSION}-seed{seed}-{spec.image_size}px-"
            f"{spec.train_normal}-{spec.test_normal}-{spec.test_per_defect}")
    return paths.cache_dir() / "synthetic" / name


def ensure_synthetic_dataset(seed: int = 0, spec: SyntheticSpec = SyntheticSpec(), root: Path | None = None) -> Path:
    """Generate the synthetic dataset unless it is already complete; return its root.

    Generation writes into a temporary sibling folder and renames it into place, so an
    interrupted run never leaves a half-written dataset behind; a lock file beside it makes
    processes that start together (parallel batch jobs) generate it once.
    """
    root = Path(root) if root is not None else synthetic_root(seed, spec)
    marker = root / "GENERATED.json"
    if marker.is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if marker.is_file():  # another process generated it while this one waited
            return root
        staging = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        staging.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; the dataset is for every user
        try:
            _generate_into(staging, spec, seed)
            (staging / "GENERATED.json").write_text(
                json.dumps({"generator_version": GENERATOR_VERSION, "seed": seed, **spec.__dict__}, indent=2)
            )
            if root.exists():  # an incomplete leftover without marker
                shutil.rmtree(root)
            os.replace(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return root
