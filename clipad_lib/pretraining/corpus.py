"""A captioned synthetic corpus for pretraining a tiny CLIP that knows what a defect is.

Twenty-four procedurally generated categories: the eight of the embedded evaluation set
(``data/synthetic.py``: the same generators, drawn from other seeds, so no evaluation image is
ever seen) and sixteen more (eight textures, eight objects) that exist only here. Each base
image comes as a normal/defective pair: the same picture before and after one defect, with
the defect's exact mask. Defect kinds are shared by every category of a kind (textures:
colour shift, hole, scratch, stain; objects: colour shift, hole, missing part, scratch), so
the words "hole" or "scratch" mean the same thing on a washer and on a gear, and the generic
words ("damaged", "defect", "flaw") mean "one of these" everywhere.

Captions are drawn from the sample's rng: normal images get a normal-state caption ("a photo
of a flawless gear."), defective ones name the defect and, from the mask's centroid, where it
is ("a photo of a washer with a scratch at the top left."), or use a generic defect word.
Sampling crops a square window of the pair and recaptions it from the mask inside the window,
so a crop that shows the defect says so and says where; this teaches small windows as well as
whole images, which the window- and patch-based methods rely on.

Everything is a deterministic function of the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import synthetic
from ..data.synthetic import OBJECT_DEFECTS, TEXTURE_DEFECTS, _apply_defect, _normal_image, _smooth_noise, _to_uint8

# The first element of every rng seed here; the evaluation set's seeds never start with it.
CORPUS_SEED_TAG = 20_261_201

EXTRA_TEXTURES = ("carpet", "leather", "marble", "mesh", "stripes", "dots", "wood", "ripple")
EXTRA_OBJECTS = ("gear", "ring", "button", "coin", "bolt", "capsule", "star", "triangle")
TEXTURES = synthetic.TEXTURES + EXTRA_TEXTURES
OBJECTS = synthetic.OBJECTS + EXTRA_OBJECTS
CATEGORIES = TEXTURES + OBJECTS

# What a caption calls each defect kind (several words where English has them).
DEFECT_WORDS = {
    "colour_shift": ("discoloration", "colour defect", "colour stain"),
    "hole": ("hole", "puncture"),
    "scratch": ("scratch", "scrape"),
    "stain": ("stain", "contamination", "smudge"),
    "missing_part": ("missing part", "broken part", "missing piece"),
}
GENERIC_DEFECT_CAPTIONS = ("a photo of a damaged {c}.", "a photo of a broken {c}.", "a {c} with a defect.",
                           "a {c} with damage.", "a defective {c}.", "a {c} with a flaw.")
SPECIFIC_DEFECT_CAPTIONS = ("a photo of a {c} with a {d} {where}.", "a {c} with a {d} {where}.",
                            "a damaged {c}: a {d} {where}.", "a photo of a {c} with a {d}.")
NORMAL_CAPTIONS = ("a photo of a {c}.", "a photo of a flawless {c}.", "a photo of a perfect {c}.",
                   "a good {c} without defect.", "a normal {c}.", "a {c} without damage.",
                   "a clean {c} with no flaw.", "a photo of an intact {c}.")
MIN_IMAGE_SIZE = 96
_ROWS, _COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")


def defects_of(category: str) -> tuple[str, ...]:
    return TEXTURE_DEFECTS if category in TEXTURES else OBJECT_DEFECTS


def where(mask: np.ndarray) -> str:
    """A mask's centroid as words on a 3 x 3 grid: "at the top left", "in the centre", "on the right"."""
    rows, columns = np.nonzero(mask)
    size = mask.shape[0]
    row = _ROWS[min(int(3 * rows.mean() / size), 2)]
    column = _COLUMNS[min(int(3 * columns.mean() / mask.shape[1]), 2)]
    if row == "middle" and column == "centre":
        return "in the centre"
    if row == "middle":
        return f"on the {column}"
    if column == "centre":
        return f"at the {row}"
    return f"at the {row} {column}"


def caption(category: str, defect: str | None, mask: np.ndarray | None, rng: np.random.Generator) -> str:
    """One caption: normal-state words for ``defect=None``, else a generic or a specific defect caption."""
    name = category
    if defect is None:
        return NORMAL_CAPTIONS[rng.integers(len(NORMAL_CAPTIONS))].format(c=name)
    if rng.random() < 0.3:
        return GENERIC_DEFECT_CAPTIONS[rng.integers(len(GENERIC_DEFECT_CAPTIONS))].format(c=name)
    words = DEFECT_WORDS[defect]
    template = SPECIFIC_DEFECT_CAPTIONS[rng.integers(len(SPECIFIC_DEFECT_CAPTIONS))]
    return template.format(c=name, d=words[rng.integers(len(words))], where=where(mask))


# --- the sixteen categories that exist only in the corpus ------------------------------------

def _category_colour(category: str, rng: np.random.Generator) -> np.ndarray:
    base = np.random.default_rng([CORPUS_SEED_TAG, CATEGORIES.index(category)]).uniform(0.25, 0.85, 3)
    return base + rng.uniform(-0.03, 0.03, 3)


def _extra_texture(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    colour = _category_colour(category, rng)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if category == "carpet":
        pattern = 0.6 + 0.12 * _smooth_noise(rng, size, 40) + 0.05 * _smooth_noise(rng, size, 8)
    elif category == "leather":
        pattern = 0.55 + 0.25 * np.abs(_smooth_noise(rng, size, 18))
    elif category == "marble":
        pattern = 0.6 + 0.25 * np.sin(u / rng.uniform(10, 14) + 3 * _smooth_noise(rng, size, 5))
    elif category == "mesh":
        period = rng.uniform(8, 11)
        lines = np.minimum(np.abs(np.sin(np.pi * xx / period)), np.abs(np.sin(np.pi * yy / period)))
        pattern = 0.3 + 0.5 * (lines > 0.3)
    elif category == "stripes":
        pattern = 0.45 + 0.3 * (np.sin(2 * np.pi * u / rng.uniform(12, 16)) > 0)
    elif category == "dots":
        period, offset = rng.uniform(12, 15), rng.uniform(0, 12, 2)
        dy = (yy + offset[0]) % period - period / 2
        dx = (xx + offset[1]) % period - period / 2
        pattern = 0.75 - 0.4 * (np.hypot(dx, dy) < period * 0.25)
    elif category == "wood":
        centre = rng.uniform(-size, 2 * size, 2)
        radius = np.hypot(yy - centre[0], xx - centre[1])
        pattern = 0.6 + 0.2 * np.sin(radius / rng.uniform(2.5, 3.5) + 2 * _smooth_noise(rng, size, 4))
    else:  # ripple: concentric waves from a point in the image
        centre = rng.uniform(0, size, 2)
        pattern = 0.6 + 0.2 * np.cos(np.hypot(yy - centre[0], xx - centre[1]) / rng.uniform(3, 4))
    image = pattern[..., None] * colour[None, None, :] * 1.2
    return image + rng.normal(0, 0.01, image.shape)


def _extra_object(category: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centre = size / 2 + rng.uniform(-size * 0.04, size * 0.04, 2)
    dy, dx = yy - centre[0], xx - centre[1]
    radius, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    scale = size * rng.uniform(0.30, 0.33)
    angle = rng.uniform(0, 2 * np.pi)
    colour = _category_colour(category, rng)
    shade = np.ones((size, size), dtype=np.float32)
    if category == "gear":
        teeth = np.where(np.sin(10 * (theta - angle)) > 0, 1.0, 0.82)
        footprint = (radius < scale * teeth) & (radius > scale * 0.25)
    elif category == "ring":
        footprint = (radius < scale) & (radius > scale * 0.78)
        shade = 0.8 + 0.2 * np.cos(theta - angle)
    elif category == "button":
        holes = np.zeros_like(radius, dtype=bool)
        for k in range(4):
            hy, hx = np.sin(angle + k * np.pi / 2) * scale * 0.3, np.cos(angle + k * np.pi / 2) * scale * 0.3
            holes |= np.hypot(dy - hy, dx - hx) < scale * 0.1
        footprint = (radius < scale) & ~holes
        shade = np.where(radius > scale * 0.8, 0.75, 1.0)
    elif category == "coin":
        footprint = radius < scale
        shade = np.where(radius > scale * 0.85, 0.7, 0.95 + 0.05 * np.cos(theta - angle))
    elif category == "bolt":
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        head = (np.abs(u + scale * 0.55) < scale * 0.35) & (np.abs(v) < scale * 0.45)
        shaft = (np.abs(u - scale * 0.3) < scale * 0.6) & (np.abs(v) < scale * 0.2)
        footprint = head | shaft
        shade = np.where(head, 0.8, 1.0 - 0.15 * (np.sin(u / 2.0) > 0))
    elif category == "capsule":
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        along = np.clip(u, -scale * 0.55, scale * 0.55)
        footprint = np.hypot(u - along, v) < scale * 0.4
        shade = np.where(u > 0, 1.0, 0.5)
    elif category == "star":
        points = 0.55 + 0.45 * np.abs(np.cos(2.5 * (theta - angle)))
        footprint = radius < scale * points
    else:  # triangle
        edges = np.max([dx * np.cos(angle + k * 2 * np.pi / 3) + dy * np.sin(angle + k * 2 * np.pi / 3)
                        for k in range(3)], axis=0)
        footprint = edges < scale * 0.5
        shade = 0.85 + 0.15 * (edges / scale)
    background = 0.18 + 0.02 * _smooth_noise(rng, size, 4)
    image = np.where(footprint[..., None], shade[..., None] * colour[None, None, :], background[..., None])
    return image + rng.normal(0, 0.01, image.shape), footprint


def normal_image(category: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(float image [S, S, 3] in about [0, 1], object footprint [S, S] or None for a texture)."""
    if category in synthetic.CATEGORIES:
        return _normal_image(category, rng, size)
    if category in EXTRA_TEXTURES:
        return _extra_texture(category, rng, size), None
    if category in EXTRA_OBJECTS:
        return _extra_object(category, rng, size)
    raise ValueError(f"unknown corpus category {category!r}; expected one of {', '.join(CATEGORIES)}")


# --- the pool of pairs and the sampler ------------------------------------------------------

@dataclass
class PairPool:
    """Normal/defective pairs: normal, defective [P, S, S, 3] uint8; masks [P, S, S] bool;
    category, defect [P] indices into ``CATEGORIES`` and the category's ``defects_of``."""

    normal: np.ndarray
    defective: np.ndarray
    masks: np.ndarray
    category: np.ndarray
    defect: np.ndarray

    def __len__(self) -> int:
        return len(self.category)


def make_pool(pairs_per_category: int, seed: int, image_size: int = 128, split: int = 0,
              categories: tuple[str, ...] = CATEGORIES) -> PairPool:
    """``pairs_per_category`` pairs of every category; ``split`` separates training (0) from
    held-out (1) pools. Each pair's rng is seeded by (tag, seed, split, category, index)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"the corpus is drawn at {MIN_IMAGE_SIZE} px or more (got {image_size}): below that the "
                         "thinnest objects (ring, washer) leave no room for a defect; downsample the crops instead")
    size = image_size
    count = pairs_per_category * len(categories)
    normal = np.empty((count, size, size, 3), np.uint8)
    defective = np.empty_like(normal)
    masks = np.empty((count, size, size), bool)
    category_index = np.empty(count, np.int64)
    defect_index = np.empty(count, np.int64)
    row = 0
    for category in categories:
        c = CATEGORIES.index(category)
        kinds = defects_of(category)
        for i in range(pairs_per_category):
            rng = np.random.default_rng([CORPUS_SEED_TAG, seed, split, c, i])
            image, footprint = normal_image(category, rng, size)
            kind = int(rng.integers(len(kinds)))
            for _attempt in range(10):  # a defect that changed too few pixels is redrawn
                changed, mask = _apply_defect(kinds[kind], image, footprint, 0.18, rng)
                if mask.sum() >= 8:
                    break
            normal[row], defective[row], masks[row] = _to_uint8(image), changed, mask
            category_index[row], defect_index[row] = c, kind
            row += 1
    return PairPool(normal, defective, masks, category_index, defect_index)


def sample_batch(pool: PairPool, pairs: int, rng: np.random.Generator, min_scale: float = 0.35,
                 min_defect_pixels: int = 6) -> tuple[torch.Tensor, list[str]]:
    """A contrastive batch of ``2 * pairs`` crops: for each drawn pair the same square window of
    its normal and of its defective image (a hard negative for each other), resized back to the
    pool's size, with captions computed from the mask inside the window.

    Returns (images [2 * pairs, 3, S, S] float in [0, 1], captions): normal crops first.
    The window is redrawn until it shows at least ``min_defect_pixels`` of the defect.
    """
    size = pool.normal.shape[1]
    chosen = rng.choice(len(pool), size=pairs, replace=False)
    normal_crops, defective_crops, normal_captions, defect_captions = [], [], [], []
    for index in chosen:
        mask = pool.masks[index]
        for _attempt in range(20):
            side = int(round(size * rng.uniform(min_scale, 1.0)))
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            window = mask[top:top + side, left:left + side]
            if window.sum() >= min_defect_pixels:
                break
        else:
            side, top, left, window = size, 0, 0, mask
        category = CATEGORIES[pool.category[index]]
        defect = defects_of(category)[pool.defect[index]]
        for source, crops in ((pool.normal, normal_crops), (pool.defective, defective_crops)):
            crops.append(source[index, top:top + side, left:left + side])
        normal_captions.append(caption(category, None, None, rng))
        defect_captions.append(caption(category, defect, window, rng))
    images = [_resize(crop, size) for crop in normal_crops + defective_crops]
    return torch.stack(images), normal_captions + defect_captions


def _resize(crop: np.ndarray, size: int) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div(255)
    if image.shape[-1] == size:
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def full_views(pool: PairPool) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Every pair uncropped, for evaluation: (images [2P, 3, S, S] in [0, 1], category [2P],
    is_defective [2P] bool), normal images first."""
    images = np.concatenate([pool.normal, pool.defective])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return tensor, np.concatenate([pool.category, pool.category]), np.repeat([False, True], len(pool))


__all__ = ["CATEGORIES", "DEFECT_WORDS", "EXTRA_OBJECTS", "EXTRA_TEXTURES", "OBJECTS", "PairPool", "TEXTURES",
           "caption", "defects_of", "full_views", "make_pool", "normal_image", "sample_batch", "where"]
