"""Atomic file writes: a reader never sees a half-written record, table, list or figure."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, rename it into place.

    ``data`` may be a function that writes into the open binary file (e.g. ``numpy.save``), so a
    large array is streamed rather than copied into bytes first. The file gets the usual
    permissions (0666 minus the umask), not the 0600 of temporary files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
