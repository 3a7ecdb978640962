"""The training loop shared by the methods that learn from auxiliary data (below methods/, above data/)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .host_memory import reuse_freed_memory_for

if TYPE_CHECKING:
    from .data.auxiliary import AuxiliaryTrainingSet


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimizer step on ``loss`` (gradients cleared first); returns the loss as a float."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_epochs(step: Callable[[dict], torch.Tensor], optimizer: torch.optim.Optimizer,
                 training_set: AuxiliaryTrainingSet, *, epochs: int, batch_size: int, seed: int,
                 desc: str) -> list[float]:
    """Run ``epochs`` shuffled passes; ``step(batch)`` returns the loss to minimize.

    The shuffling generator is seeded once, and the training set is told the epoch (its mosaic
    draws depend on it), so the same seed gives the same run. A progress bar shows the running
    loss. Returns the mean loss of every epoch.
    """
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if parameters:
        reuse_freed_memory_for(parameters[0].device)  # CPU: no page fault per activation (host_memory)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        training_set.epoch = epoch
        loader = torch.utils.data.DataLoader(training_set, batch_size=batch_size, shuffle=True, generator=generator)
        losses = []
        progress = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for batch in progress:
            losses.append(gradient_step(optimizer, step(batch)))
            progress.set_postfix(loss=f"{np.mean(losses):.4f}")
        history.append(float(np.mean(losses)))
    return history
