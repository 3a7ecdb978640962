"""Summaries of repeated runs (seeds, shots) as mean ± standard deviation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof=1, 0 for a single value) of n runs."""

    mean: float
    std: float
    n: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """'91.2 ± 0.4' with values scaled to percent by default, as the papers print them."""
        if math.isnan(self.mean):
            return "nan"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def mean_std(values: Iterable[float]) -> MeanStd:
    """Summarize the values of one metric over seeds. NaNs are an error, not silently dropped."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    if np.isnan(array).any():
        raise ValueError(f"mean_std got NaN among {array.tolist()}; fix or drop the failing run first")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return MeanStd(mean=float(array.mean()), std=std, n=int(array.size))
