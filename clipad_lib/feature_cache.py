"""A content-keyed cache of frozen-encoder outputs (and of anything else computed once per key).

Methods that keep the CLIP encoders frozen and train only small heads on their outputs
(CLIP-FSAC++'s adapters) need each image's embedding once. The key of an embedding is the
hash of (encoder identity, transform description, the transformed image's bytes), so the same
image under the same transform is encoded once across shots, seeds, categories, ablation
variants and — once saved — notebook runs; another transform or other weights never hit.

Storage. A namespace holds rows of one shape and dtype (an embedding [D] float32, a synthetic
anomaly [H, W, 4] uint8, ...). New rows stay in memory until :meth:`FeatureCache.save`, which
writes them as one *shard* of the namespace: ``<directory>/<namespace>/<id>.npy`` (the rows,
[n, ...]) and ``<id>.keys`` (one key per line, written last: a shard without its key file is
ignored). Shards are opened memory-mapped, so a paper-scale cache (~400k embeddings of 640
floats, ~1 GB) costs only the rows a run reads; every save adds a shard, so two notebooks
saving into one cache never write the same file.

Batch invariance. Matrix kernels choose their blocking by the batch size, so an image encoded
in a batch of 3 and in a batch of 32 can differ in the last bits — and a few-shot training
amplifies such bits into different AUROCs. :func:`encode_in_fixed_batches` therefore always
encodes batches of exactly ``batch_size`` rows (the last one padded by repeating its last
image): an image's embedding then depends on the image alone, whichever images were missing
from the cache with it, and cached and uncached runs agree bit for bit on the same machine. The
padding costs up to ``batch_size - 1`` encodings per call (a 1-shot fit encodes its one reference
in a full batch), so the batch is kept small (CLIP-FSAC++: 8, the evaluation batch).
"""
from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
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


def encode_in_fixed_batches(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                            batch_size: int) -> torch.Tensor:
    """``encode`` over ``images`` [N, ...] in batches of exactly ``batch_size`` -> [N, ...].

    The last batch is padded by repeating its last image, so every image goes through the
    encoder in a batch of the same shape and its output does not depend on its companions.
    """
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        padding = batch_size - len(chunk)
        if padding:
            chunk = torch.cat([chunk, chunk[-1:].expand(padding, *chunk.shape[1:])])
        outputs.append(encode(chunk)[:batch_size - padding])
    return torch.cat(outputs)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses


class _Namespace:
    """Rows by key: saved shards (memory-mapped) and rows not saved yet (in memory)."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.blocks: list[np.ndarray] = []       # shards first, then unsaved chunks
        self.saved_blocks = 0
        self.where: dict[str, tuple[int, int]] = {}  # key -> (block, row)
        self.unsaved_keys: list[list[str]] = []  # the keys of each unsaved block
        if directory is not None and directory.is_dir():
            for keys_file in sorted(directory.glob("*.keys")):
                self._open_shard(keys_file)
        self.saved_blocks = len(self.blocks)

    def _open_shard(self, keys_file: Path) -> None:
        rows_file = keys_file.with_suffix(".npy")
        keys = keys_file.read_text().split()
        try:
            rows = np.load(rows_file, mmap_mode="r")
        except (OSError, ValueError) as error:
            warnings.warn(f"feature cache: skipping shard {rows_file} ({error}); its rows will be computed again",
                          RuntimeWarning, stacklevel=4)
            return
        if len(rows) != len(keys):
            warnings.warn(f"feature cache: skipping shard {rows_file}: {len(rows)} rows but {len(keys)} keys",
                          RuntimeWarning, stacklevel=4)
            return
        block = len(self.blocks)
        self.blocks.append(rows)
        for row, key in enumerate(keys):
            self.where.setdefault(key, (block, row))  # two processes may have saved the same key

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def __len__(self) -> int:
        return len(self.where)

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        new = [i for i, key in enumerate(keys) if key not in self.where]
        if not new:
            return
        rows, keys = np.ascontiguousarray(rows[new]), [keys[i] for i in new]
        if self.blocks and rows.shape[1:] != self.blocks[0].shape[1:]:
            raise ValueError(f"feature cache: rows of shape {rows.shape[1:]} do not fit a namespace of rows "
                             f"{self.blocks[0].shape[1:]}; namespaces must separate encoders and transforms")
        block = len(self.blocks)
        self.blocks.append(rows)
        self.unsaved_keys.append(keys)
        for row, key in enumerate(keys):
            self.where[key] = (block, row)

    def gather(self, keys: Sequence[str]) -> np.ndarray:
        """Rows of ``keys`` (every one present) -> [len(keys), ...], reading each block once."""
        located = np.array([self.where[key] for key in keys], dtype=np.int64).reshape(-1, 2)
        first = self.blocks[located[0, 0]]
        out = np.empty((len(keys), *first.shape[1:]), dtype=first.dtype)
        for block in np.unique(located[:, 0]):
            positions = np.flatnonzero(located[:, 0] == block)
            rows = located[positions, 1]
            order = np.argsort(rows)  # ascending rows read a memory-mapped shard front to back
            out[positions[order]] = self.blocks[block][rows[order]]
        return out

    def save(self) -> Path | None:
        """Write the unsaved rows as one new shard; returns its rows file (None if nothing was new)."""
        if self.directory is None or not self.unsaved_keys:
            return None
        rows = np.concatenate(self.blocks[self.saved_blocks:])
        keys = [key for chunk in self.unsaved_keys for key in chunk]
        name = uuid.uuid4().hex
        rows_file = atomic_write(self.directory / f"{name}.npy", lambda handle: np.save(handle, rows))
        atomic_write(self.directory / f"{name}.keys", "\n".join(keys) + "\n")  # the shard exists from here
        # The saved rows are now read from the shard like any other.
        del self.blocks[self.saved_blocks:]
        self.unsaved_keys.clear()
        shard = np.load(rows_file, mmap_mode="r")
        block = len(self.blocks)
        self.blocks.append(shard)
        self.saved_blocks = len(self.blocks)
        for row, key in enumerate(keys):
            self.where[key] = (block, row)
        return rows_file


class FeatureCache:
    """Rows by content key, in memory and optionally in memory-mapped shards on disk.

    Args:
        directory: where :meth:`save` writes and the constructor's namespaces read
            ``<namespace>/*.npy`` shards; None keeps everything in memory.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._namespaces: dict[str, _Namespace] = {}
        self.stats = CacheStats()

    @staticmethod
    def namespace(encoder_identity: dict, transform_description: dict) -> str:
        """One namespace per (encoder weights, transform): a short stable digest of both."""
        text = json.dumps({"encoder": encoder_identity, "transform": transform_description}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()

    def _table(self, namespace: str) -> _Namespace:
        if namespace not in self._namespaces:
            directory = self.directory / namespace if self.directory is not None else None
            self._namespaces[namespace] = _Namespace(directory)
        return self._namespaces[namespace]

    def rows(self, namespace: str, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        """The rows of ``keys`` [N, ...]; ``compute(indices)`` makes the missing ones, [len(indices), ...]."""
        if len(keys) == 0:
            raise ValueError("the feature cache needs at least one key")
        table = self._table(namespace)
        first_index: dict[str, int] = {}
        for index, key in enumerate(keys):
            first_index.setdefault(key, index)
        missing_keys = [key for key in first_index if key not in table]  # each computed once
        self.stats.hits += len(keys) - len(missing_keys)
        self.stats.misses += len(missing_keys)
        if missing_keys:
            computed = np.asarray(compute([first_index[key] for key in missing_keys]))
            if len(computed) != len(missing_keys):
                raise ValueError(f"compute returned {len(computed)} rows for {len(missing_keys)} keys")
            table.add(missing_keys, computed)
        return table.gather(keys)

    def embed(self, namespace: str, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
              batch_size: int = 32) -> torch.Tensor:
        """Embeddings [N, D] of ``images`` [N, ...], encoding only those not cached yet.

        ``encode`` maps a batch [n, ...] to [n, D]; it always sees batches of ``batch_size``
        (see :func:`encode_in_fixed_batches`). Rows are stored in float32 on the CPU and returned
        on the images' device.
        """
        if len(images) == 0:
            raise ValueError("embed() needs at least one image")

        def compute(indices: list[int]) -> np.ndarray:
            with torch.no_grad():
                return encode_in_fixed_batches(encode, images[indices], batch_size).float().cpu().numpy()

        rows = self.rows(namespace, [tensor_digest(image) for image in images], compute)
        return torch.from_numpy(rows).to(images.device)

    def __len__(self) -> int:
        return sum(len(table) for table in self._namespaces.values())

    def save(self) -> list[Path]:
        """Write each namespace's new rows as one shard (atomically); returns the shards written."""
        if self.directory is None:
            return []
        return [path for table in self._namespaces.values() if (path := table.save()) is not None]
