"""Figures of a pretraining run: the loss curve and the held-out zero-shot figures over steps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def training_figures(log) -> tuple:
    """(loss figure, zero-shot figure) of a :class:`~clipad_lib.pretraining.train.TrainingLog`.

    The loss is shown per step and as a running mean over 50 steps; the zero-shot figure shows
    held-out image→text and text→image retrieval top-1, category accuracy and the normal/damaged
    state AUROC at every evaluation."""
    steps, loss = np.asarray(log.steps), np.asarray(log.loss)
    loss_figure, axis = plt.subplots(figsize=(6, 3.2))
    axis.plot(steps, loss, color="0.75", linewidth=0.6, label="per step")
    window = min(50, len(loss))
    running = np.convolve(loss, np.ones(window) / window, mode="valid")
    axis.plot(steps[window - 1:], running, color="C0", label=f"mean of {window} steps")
    axis.set_xlabel("step")
    axis.set_ylabel("contrastive loss (open_clip ClipLoss)")
    axis.set_title(f"pretraining {log.config['model_name']} on the captioned corpus")
    axis.legend()
    evaluations = log.evaluations
    eval_steps = [e["step"] for e in evaluations]
    zero_shot_figure, axis = plt.subplots(figsize=(6, 3.2))
    for key, label in (("retrieval_i2t", "image→text top-1"), ("retrieval_t2i", "text→image top-1"),
                       ("category_accuracy", "category accuracy (24-way)"),
                       ("state_auroc", "normal vs damaged AUROC")):
        axis.plot(eval_steps, [e[key] for e in evaluations], marker=".", label=label)
    axis.axhline(0.5, color="0.6", linestyle=":", linewidth=0.8)
    axis.set_ylim(0, 1)
    axis.set_xlabel("step")
    axis.set_ylabel("held-out figure")
    axis.set_title("zero-shot figures on held-out corpus pairs")
    axis.legend(fontsize=8, loc="lower right")
    return loss_figure, zero_shot_figure


def captioned_samples(images, captions, columns: int = 4):
    """A grid of corpus crops [N, 3, S, S] in [0, 1] with their captions as titles."""
    rows = -(-len(captions) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, text in zip(axes.flat, images, captions):
        axis.imshow(image.permute(1, 2, 0).numpy())
        axis.set_title(_wrap(text), fontsize=7)
    figure.tight_layout()
    return figure


def _wrap(text: str, width: int = 30) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
