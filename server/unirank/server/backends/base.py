"""The contract every scoring backend honours."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

import numpy as np

from unirank.artifact import ModelInputs


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
    """The backend failed to score (the pipeline turns this into the task's fallback)."""


class DeadlineDropped(BackendError):
    """The request's deadline passed while it waited, so it was never executed."""


class QueueFull(BackendError):
    """The backend's bounded queue is full (the pipeline answers RESOURCE_EXHAUSTED)."""
