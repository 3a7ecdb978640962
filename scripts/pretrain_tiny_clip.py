"""Pretrain the embedded tiny CLIP (``clipad-tiny-ViT`` / ``clipad-synthetic``) on the captioned corpus.

    python scripts/pretrain_tiny_clip.py [--out DIR] [--steps N] [--check]

Writes into DIR (default: the package's ``clipad_lib/backbones/weights``):
``clipad-tiny-ViT-synthetic.safetensors`` (float16), ``clipad-tiny-ViT-synthetic.log.json`` (loss per
step, held-out figures every ``eval_every`` steps, wall time, torch threads) and the two figures
``...-loss.png`` / ``...-zero-shot.png``, and the model card ``clipad-tiny-ViT-synthetic.md`` written
from the log and the weights.

``--check`` trains into a temporary folder and compares the result with the shipped files: the
weights' SHA-256 and the largest absolute difference of any tensor, and the loss curve.
Training is deterministic on CPU for a given torch build, CPU type and thread count: every random
draw is seeded and torch runs its deterministic kernels. Matrix products split their sums by
thread and by vector width, so another thread count or instruction set rounds differently and the
bits drift; ``--check`` reports by how much.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clipad_lib.backbones.clip import SHIPPED_WEIGHTS_DIR
from clipad_lib.pretraining.card import STEM, write_model_card
from clipad_lib.pretraining.train import PretrainConfig, TrainingLog, pretrain, save_log, save_weights
from clipad_lib.viz.pretraining import training_figures


def train_into(out: Path, config: PretrainConfig) -> None:
    model, log = pretrain(config, progress=lambda steps: tqdm(steps, desc="pretraining", mininterval=10))
    size = save_weights(model, out / f"{STEM}.safetensors")
    save_log(log, out / f"{STEM}.log.json")
    loss_figure, zero_shot_figure = training_figures(log)
    loss_figure.savefig(out / f"{STEM}-loss.png", dpi=120, bbox_inches="tight")
    zero_shot_figure.savefig(out / f"{STEM}-zero-shot.png", dpi=120, bbox_inches="tight")
    write_model_card(out)
    final = log.evaluations[-1]
    print(f"{out / STEM}.safetensors: {size / 2**20:.2f} MiB; {log.seconds / 60:.1f} min on "
          f"{log.torch_threads} threads; final loss {log.loss[-1]:.3f}; held-out "
          f"i2t {final['retrieval_i2t']:.3f}, t2i {final['retrieval_t2i']:.3f}, "
          f"category {final['category_accuracy']:.3f}, state AUROC {final['state_auroc']:.3f}")


def compare(fresh: Path, shipped: Path) -> bool:
    from safetensors.torch import load_file

    digests = [hashlib.sha256((folder / f"{STEM}.safetensors").read_bytes()).hexdigest() for folder in (fresh, shipped)]
    a, b = (load_file(str(folder / f"{STEM}.safetensors")) for folder in (fresh, shipped))
    largest = max(float((a[key].float() - b[key].float()).abs().max()) for key in a)
    loss_a, loss_b = (TrainingLog.from_json((folder / f"{STEM}.log.json").read_text()).loss for folder in (fresh, shipped))
    loss_gap = max(abs(x - y) for x, y in zip(loss_a, loss_b))
    print(f"sha256 fresh {digests[0][:16]}…, shipped {digests[1][:16]}…: "
          f"{'identical' if digests[0] == digests[1] else 'different'}; largest tensor difference {largest:.3g}; "
          f"largest loss difference {loss_gap:.3g}")
    return digests[0] == digests[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS_DIR)
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (trials only)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the shipped model used 2)")
    parser.add_argument("--check", action="store_true", help="retrain and compare with the shipped weights")
    parser.add_argument("--card", action="store_true", help="only rewrite the model card from the log and weights in --out")
    args = parser.parse_args()
    if args.card:
        print(write_model_card(args.out))
        return
    torch.set_num_threads(args.threads)
    config = PretrainConfig() if args.steps is None else replace(PretrainConfig(), steps=args.steps)
    if args.check:
        with tempfile.TemporaryDirectory() as folder:
            train_into(Path(folder), config)
            sys.exit(0 if compare(Path(folder), SHIPPED_WEIGHTS_DIR) else 1)
    train_into(args.out, config)


if __name__ == "__main__":
    main()
