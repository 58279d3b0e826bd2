"""The quantile histogram a score reference is made of, one definition for training and serving."""

from __future__ import annotations

import numpy as np

REFERENCE_BINS = 10
"""Bins of a score reference: each holds about a tenth of the reference scores."""


def quantile_histogram(values: np.ndarray, bins: int = REFERENCE_BINS) -> tuple[list[float], list[float]]:
    """(``bins + 1`` increasing edges at the quantiles of ``values``, the share of values per bin).

    Equal quantiles (a constant score) would make empty bins of zero width, so the edges are kept
    strictly increasing by a nudge far below any score's resolution.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("no finite value to make a histogram of")
    edges = np.quantile(values, np.linspace(0.0, 1.0, bins + 1))
    edges = np.maximum.accumulate(edges + np.arange(bins + 1) * 1e-9)
    counts, _ = np.histogram(values, bins=edges)
    return [float(e) for e in edges], [float(c) / len(values) for c in counts]
