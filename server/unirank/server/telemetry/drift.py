"""Score drift per task: live top scores binned on the artifact's reference edges, compared by PSI."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unirank.artifact.histogram import REFERENCE_BINS, quantile_histogram

PSI_EPSILON = 1e-4
"""Floor of a bin's fraction in the PSI sum, so an empty bin costs a large but finite amount."""


def psi(reference: Sequence[float], live: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index ``sum((live - ref) * ln(live / ref))`` over aligned bins.

    0 means the same distribution; the usual reading is < 0.1 stable, 0.1-0.25 moderate shift,
    > 0.25 a significant shift worth an alert.
    """
    if len(reference) != len(live):
        raise ValueError(f"{len(reference)} reference bins but {len(live)} live bins")
    total = 0.0
    for ref, cur in zip(reference, live, strict=True):
        ref, cur = max(ref, epsilon), max(cur, epsilon)
        total += (cur - ref) * math.log(cur / ref)
    return total


@dataclass(frozen=True)
class ScoreReference:
    """The offline distribution of one task's top score: ``fractions[i]`` of the reference rows
    fell in ``[edges[i], edges[i + 1])``."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.fractions) + 1 or len(self.fractions) < 2:
            raise ValueError(f"{len(self.edges)} edges for {len(self.fractions)} bins")

    @property
    def bins(self) -> int:
        return len(self.fractions)

    @classmethod
    def from_scores(cls, scores: Sequence[float], bins: int = REFERENCE_BINS) -> ScoreReference:
        """The quantile histogram of ``scores`` (at least one finite), binned as training bins."""
        edges, fractions = quantile_histogram(np.asarray(scores, dtype=np.float64), bins)
        return cls(tuple(edges), tuple(fractions))

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> dict[str, ScoreReference]:
        """The references in an artifact's ``metrics.json`` (``score_reference``), by task name.

        An artifact without them (or with a malformed one) simply has no drift for that task.
        """
        out: dict[str, ScoreReference] = {}
        for task, entry in (metrics.get("score_reference") or {}).items():
            try:
                out[task] = cls(
                    tuple(float(e) for e in entry["edges"]), tuple(float(f) for f in entry["fractions"])
                )
            except (KeyError, TypeError, ValueError):
                continue
        return out


class DriftWindow:
    """The last ``window`` top scores of one task, kept as bin counts (O(1) per observation).

    Scores below the first edge count in the first bin and above the last edge in the last bin,
    as the reference's own extreme quantiles would.
    """

    def __init__(self, reference: ScoreReference, window: int, min_samples: int) -> None:
        self.reference = reference
        self.window = window
        self.min_samples = min_samples
        self._inner_edges = list(reference.edges[1:-1])
        self._ring = [0] * window  # bin of each kept score, oldest overwritten first
        self._counts = [0] * reference.bins
        self._next = 0
        self.samples = 0

    def observe(self, score: float) -> None:
        bin_ = bisect.bisect_right(self._inner_edges, score)
        ring = self._ring
        if self.samples == self.window:
            self._counts[ring[self._next]] -= 1
        else:
            self.samples += 1
        ring[self._next] = bin_
        self._counts[bin_] += 1
        self._next = (self._next + 1) % self.window

    def live_fractions(self) -> list[float]:
        n = self.samples
        return [c / n for c in self._counts] if n else [0.0] * self.reference.bins

    def psi(self) -> float | None:
        """PSI of the window against the reference; None until ``min_samples`` scores arrived."""
        if self.samples < self.min_samples:
            return None
        return psi(self.reference.fractions, self.live_fractions())
