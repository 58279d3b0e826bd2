"""The contract every scoring backend honours."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

import numpy as np

from unirank.artifact import ModelInputs
from unirank.server.batching import DeadlineDropped, QueueFull

__all__ = ["BackendError", "DeadlineDropped", "QueueFull", "ScoringBackend"]


class ScoringBackend(Protocol):
    """Scores a batch of model inputs off the event loop.

    ``score`` returns float32 scores [B, N] aligned with ``inputs.candidates``. ``deadline`` is an
    absolute ``loop.time()`` after which the caller no longer needs the result: a batching backend
    may drop the request before executing it and raise :class:`DeadlineDropped`. ``tag`` names
    the request to a batching backend's observer (telemetry passes a ``BatchMember``); other
    backends ignore it.
    """

    name: str
    device: str

    @property
    def inline(self) -> bool:
        """``score`` runs to completion on the caller's thread without suspending (ONNX Runtime
        with no scoring threads). A timer cannot interrupt such a call, so the pipeline sets none."""
        ...

    async def start(self) -> None:
        """Load the model and warm it up; return only when ``score`` is ready."""
        ...

    async def score(
        self, inputs: ModelInputs, deadline: float | None = None, *, tag: Hashable = None
    ) -> np.ndarray: ...

    async def close(self) -> None:
        """Release threads / devices; in-flight calls may finish first."""
        ...


class BackendError(Exception):
    """The backend failed to score (the pipeline turns this into the task's fallback).

    A request a batching backend never ran is not a backend error: it raises the batcher's
    :class:`~unirank.server.batching.DeadlineDropped` (its deadline passed in the queue) or
    :class:`~unirank.server.batching.QueueFull` (overload), which monitoring must not count as a
    broken model.
    """


class InvalidScores(BackendError):
    """The model answered, but not with one finite score per candidate: a broken graph or
    checkpoint, never something to rank by (the pipeline answers with the fallback)."""


def check_scores(scores: np.ndarray, inputs: ModelInputs) -> np.ndarray:
    """``scores`` if they are finite and shaped [rows, candidates] like ``inputs.candidates``.

    Every backend checks every output it returns, so a wrong answer never reaches a caller.
    """
    expected = inputs.candidates.shape
    if scores.shape != expected:
        raise InvalidScores(f"model returned scores of shape {list(scores.shape)}, expected {list(expected)}")
    if not np.isfinite(scores).all():
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise InvalidScores(f"model returned {bad} non-finite scores of {scores.size}")
    return scores
