"""A content-keyed cache of frozen-encoder outputs.

Methods that keep the CLIP encoders frozen and train only small heads on their outputs
(CLIP-FSAC++'s adapters) need each image's embedding once. The key of an embedding is the
hash of (encoder identity, transform description, the transformed image's bytes), so the same
image under the same transform is encoded once across shots, seeds, categories, ablation
variants and — once saved — notebook runs; another transform or other weights never hit.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .io import atomic_write


def tensor_digest(tensor: torch.Tensor) -> str:
    """Hex digest of a tensor's dtype, shape and bytes."""
    array = tensor.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype}{tuple(array.shape)}".encode())
    digest.update(array.numpy().tobytes())
    return digest.hexdigest()


def module_fingerprint(module: torch.nn.Module) -> str:
    """Digest of every parameter and buffer of ``module`` (names, shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor_digest(tensor).encode())
    return digest.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses


class FeatureCache:
    """Embeddings by content key, in memory and optionally in one file per namespace on disk.

    Args:
        directory: where :meth:`save` writes and the constructor reads ``<namespace>.pt`` files;
            None keeps everything in memory.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._entries: dict[str, dict[str, torch.Tensor]] = {}
        self._loaded: set[str] = set()
        self.stats = CacheStats()

    @staticmethod
    def namespace(encoder_identity: dict, transform_description: dict) -> str:
        """One namespace per (encoder weights, transform): a short stable digest of both."""
        text = json.dumps({"encoder": encoder_identity, "transform": transform_description}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    def _table(self, namespace: str) -> dict[str, torch.Tensor]:
        if namespace not in self._loaded:
            self._loaded.add(namespace)
            table = self._entries.setdefault(namespace, {})
            path = self._path(namespace)
            if path is not None and path.is_file():
                table.update(torch.load(path, map_location="cpu", weights_only=True))
        return self._entries[namespace]

    def _path(self, namespace: str) -> Path | None:
        return self.directory / f"{namespace}.pt" if self.directory is not None else None

    def embed(self, namespace: str, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
              batch_size: int = 32) -> torch.Tensor:
        """Embeddings [N, D] of ``images`` [N, ...], encoding only those not cached yet.

        ``encode`` maps a batch [n, ...] to [n, D]; results are stored on the CPU in float32 and
        returned on the images' device.
        """
        if len(images) == 0:
            raise ValueError("embed() needs at least one image")
        table = self._table(namespace)
        keys = [tensor_digest(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in table]
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            with torch.no_grad():
                encoded = encode(images[chunk]).float().cpu()
            for index, embedding in zip(chunk, encoded):
                table[keys[index]] = embedding.clone()
        return torch.stack([table[key] for key in keys]).to(images.device)

    def __len__(self) -> int:
        return sum(len(table) for table in self._entries.values())

    def save(self) -> list[Path]:
        """Write each namespace to ``<directory>/<namespace>.pt`` atomically; returns the paths."""
        if self.directory is None:
            return []
        written = []
        for namespace, table in self._entries.items():
            buffer = io.BytesIO()
            torch.save(table, buffer)
            written.append(atomic_write(self._path(namespace), buffer.getvalue()))
        return written
