"""Reading checkpoint files safely, with errors that say what clipad expects.

Every checkpoint clipad reads (backbone weights, official method releases, its own saved heads)
goes through :func:`read_checkpoint`: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)``, which never runs pickled code. When torch refuses a file, its
message suggests ``weights_only=False``, which would run whatever code the file carries; clipad
never does that, and says instead what to give it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .clip import CheckpointError

EXPECTED = ("clipad reads a .safetensors file or a plain state dict saved with "
            "torch.save(model.state_dict(), path) (tensors in dicts and lists); it never executes pickled code")


def _torch_detail(text: str) -> str:
    """The line of torch's weights-only message that says what it met (past its boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(boilerplate)), lines[0] if lines else "")


def checkpoint_error(path: str | Path, exc: BaseException) -> CheckpointError:
    """The :class:`CheckpointError` for a file torch or safetensors could not read: one that needs
    pickled code (refused, never run), one that is no checkpoint at all, or another failure."""
    text = str(exc)
    detail = _torch_detail(text)
    if "Weights only load failed" in text and ("GLOBAL" in text or "Unsupported global" in text):
        return CheckpointError(f"{path} needs pickled code to load ({detail}), so it was not loaded. {EXPECTED}; "
                               "re-save its weights as a state dict or safetensors where you trust the file")
    if isinstance(exc, OSError):  # the file system's error (permissions, a vanished file), not its content
        return CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {detail}")
    # Anything else the unpickler or safetensors raises (UnpicklingError, KeyError, IndexError, EOFError,
    # SafetensorError, ...) means the bytes are not a checkpoint.
    return CheckpointError(f"{path} is not a checkpoint file: torch and safetensors cannot read it "
                           f"({type(exc).__name__}: {detail}). {EXPECTED}")


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a checkpoint file (a state dict, or a dict of them), read safely."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        raise checkpoint_error(path, exc) from None
