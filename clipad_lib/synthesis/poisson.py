"""Poisson image editing (Pérez et al., SIGGRAPH 2003) on a rectangle, solved exactly with the DST.

Written here rather than taken from OpenCV's ``seamlessClone`` because OpenCV is not in the
dependency set, and a rectangular region admits an exact, dependency-free solver: with the
guidance field of the source ("normal clone"), the blended patch is ``source + u`` where ``u`` is
the harmonic function whose border values are ``destination − source``. The discrete Laplace
equation with Dirichlet border on a rectangle is diagonalised by the type-I discrete sine
transform, so one forward and one inverse DST (scipy.fft) solve it to float precision.
"""
from __future__ import annotations

import numpy as np
from scipy.fft import dstn, idstn


def poisson_blend(destination: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Blend ``source`` into ``destination`` over their common rectangle.

    Args:
        destination: [h, w, C] float — the region of the destination image, border included.
        source: [h, w, C] float — the patch to paste, same shape.
    Returns:
        [h, w, C] float64: equal to ``destination`` on the one-pixel border; inside, its discrete
        Laplacian equals the source's (the gradients of the source, anchored to the destination).
    """
    if destination.shape != source.shape or destination.ndim != 3:
        raise ValueError(f"destination and source must both be [h, w, C], got {destination.shape} and {source.shape}")
    destination = destination.astype(np.float64)
    source = source.astype(np.float64)
    height, width = destination.shape[:2]
    if height < 3 or width < 3:
        return destination.copy()  # no interior pixel to solve for
    border = destination - source  # u on the border
    rhs = np.zeros((height - 2, width - 2, destination.shape[2]))
    rhs[0] += border[0, 1:-1]
    rhs[-1] += border[-1, 1:-1]
    rhs[:, 0] += border[1:-1, 0]
    rhs[:, -1] += border[1:-1, -1]
    rows = np.arange(1, height - 1)[:, None]
    cols = np.arange(1, width - 1)[None, :]
    eigenvalues = (4.0 - 2.0 * np.cos(np.pi * rows / (height - 1)) - 2.0 * np.cos(np.pi * cols / (width - 1)))
    harmonic = idstn(dstn(rhs, type=1, axes=(0, 1)) / eigenvalues[..., None], type=1, axes=(0, 1))
    blended = destination.copy()
    blended[1:-1, 1:-1] = source[1:-1, 1:-1] + harmonic
    return blended
