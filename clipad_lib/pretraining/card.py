"""The shipped model's card, written from its training log and weights file (no number by hand)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..backbones.clip import SHIPPED_WEIGHTS
from ..io import atomic_write
from . import corpus
from .train import TrainingLog

WEIGHTS = SHIPPED_WEIGHTS[("clipad-tiny-ViT", "clipad-synthetic")]
STEM = WEIGHTS.name.removesuffix(".safetensors")


def log_path(folder: Path = WEIGHTS.parent) -> Path:
    return Path(folder) / f"{STEM}.log.json"


def shipped_log() -> TrainingLog:
    """The training log of the shipped weights (loss per step, held-out figures, wall time)."""
    return TrainingLog.from_json(log_path().read_text())


def model_card(log: TrainingLog, weights: Path) -> str:
    """The model card as Markdown: what was trained on what, how, with what result, and what the
    model can and cannot stand for."""
    config, final, first = log.config, log.evaluations[-1], log.evaluations[0]
    data = weights.read_bytes()
    size_mib = len(data) / 2**20
    digest = hashlib.sha256(data).hexdigest()
    pairs = config["pairs_per_category"] * len(corpus.CATEGORIES)
    tail = log.loss[-50:]
    per_category = final["state_auroc_per_category"]
    weakest = sorted(per_category, key=per_category.get)[:3]
    return f"""# clipad-tiny-ViT · `clipad-synthetic`

A tiny CLIP pretrained on this repository's captioned synthetic corpus, so that the `smoke`
profile shows the methods working rather than at chance. Load it as any local checkpoint:
`build_clip("clipad-tiny-ViT", pretrained="clipad-synthetic", image_size={config['image_size']})`.

| | |
|---|---|
| architecture | open_clip `{config['model_name']}` (`clipad_lib/backbones/configs/`): image ViT, 8 layers, width 64, patch 8, {config['image_size']} px ({config['image_size'] // 8}×{config['image_size'] // 8} patches); text transformer, 4 layers, width 64; joint space 32-d |
| file | `{weights.name}`: float16 safetensors, {size_mib:.2f} MiB, SHA-256 `{digest}` |
| trained by | `python scripts/pretrain_tiny_clip.py` (`clipad_lib/pretraining/`), open_clip's `create_model`, tokenizer, `PatchDropout` and `ClipLoss` |
| steps | {config['steps']} × {2 * config['pairs_per_batch']} images, AdamW lr {config['learning_rate']:g} (warm-up {config['warmup_steps']}, cosine), weight decay {config['weight_decay']:g}, patch dropout {config['patch_dropout']:g} |
| seed | {config['seed']} (initialisation, pools, every batch) |
| time | {log.seconds / 60:.1f} min on {log.torch_threads} CPU threads, torch {log.torch_version} |
| loss | {log.loss[0]:.3f} at step 0, {sum(tail) / len(tail):.3f} (mean of the last {len(tail)} steps) |

## Corpus

{len(corpus.CATEGORIES)} procedural categories: the 8 of the evaluation set
({', '.join(corpus.synthetic.CATEGORIES)}), drawn from seeds the evaluation set never uses, and 16
that exist only here ({', '.join(corpus.EXTRA_TEXTURES + corpus.EXTRA_OBJECTS)}). {pairs:,} training
pairs (a normal image and the same image with one defect and its mask), {config['heldout_pairs_per_category']}
held-out pairs per category from other seeds. Defect kinds are shared across categories
(textures: colour shift, hole, scratch, stain; objects: colour shift, hole, missing part, scratch).
Each step crops the same square window ({config['min_crop_scale']:.0%} to 100% of the side) of a normal
image and of its defective twin and captions each from the mask inside the window, e.g.
"a photo of a flawless gear.", "a photo of a washer with a scratch at the top left.",
"a damaged pill: a hole in the centre.", or a generic "a photo of a damaged weave.".

## Held-out figures (the weights as shipped)

| | step 0 (random init) | step {final['step']} |
|---|---|---|
| image→text retrieval top-1 (192 crops) | {first['retrieval_i2t']:.3f} | {final['retrieval_i2t']:.3f} |
| text→image retrieval top-1 | {first['retrieval_t2i']:.3f} | {final['retrieval_t2i']:.3f} |
| category accuracy, 24-way, "a photo of a {{c}}." | {first['category_accuracy']:.3f} | {final['category_accuracy']:.3f} |
| normal vs damaged AUROC, "a photo of a flawless / damaged {{c}}." | {first['state_auroc']:.3f} | {final['state_auroc']:.3f} |

Weakest state AUROC: {', '.join(f'{c} {per_category[c]:.2f}' for c in weakest)}. The loss curve and
these figures over the steps are `{STEM}-loss.png` and `{STEM}-zero-shot.png`; notebook
`01_pretrain_tiny_clip` re-measures them and the zero-shot methods on the evaluation set.

## What it can and cannot stand for

It can stand for a CLIP whose text and image spaces agree on *this* world: category nouns, normal
vs damaged, defect words and rough positions, on crops as on whole images. So the smoke profile
exercises what zero-shot prompting relies on — prompts that separate normal from abnormal images
and windows — and training-free methods (WinCLIP, CLIP-AC) and patch memories work on it well
above chance.

What it does not give is patch tokens from which a *linear head trained on a few categories* finds
defects in other categories: AdaCLIP's and APRIL-GAN's projections, trained on four auxiliary smoke
categories, light up whole objects and texture cells of unseen categories about as much as their
defects (notebook `10_adaclip_zero_shot`). Its intermediate tokens were only ever trained through
the pooled embedding, and 3.8 M parameters hold far less than a web-scale CLIP's tokens do.

It cannot stand for a web-scale CLIP. Its vocabulary is the corpus's few dozen words (every other
token embedding is still random, so prompt templates such as "a jpeg corrupted photo of the {{}}."
add noise here, not meaning); it has seen every evaluation category's *kind* of image, as real CLIPs
have seen bottles and screws, though never an evaluation image; its defects are the generator's
five kinds. Numbers measured on it are not comparable to any paper's; they show whether a method
behaves as described (above chance, trained beats untrained, more shots help), not how well.

## Reproducing it

`python scripts/pretrain_tiny_clip.py --check` trains again into a temporary folder and compares
the SHA-256 of the weights and the largest tensor and loss differences with the shipped files.
Training runs torch's deterministic kernels with every random draw seeded, so the same torch build
and thread count give the same bits; another CPU type or thread count changes float rounding in the
matrix products and therefore the bits (see the note in `scripts/pretrain_tiny_clip.py`).
"""


def write_model_card(folder: Path = WEIGHTS.parent) -> Path:
    folder = Path(folder)
    log = TrainingLog.from_json(log_path(folder).read_text())
    path = folder / f"{STEM}.md"
    atomic_write(path, model_card(log, folder / WEIGHTS.name))
    return path
