"""The feature encoding: request context -> model input arrays.

Defined once and imported by training and by every serving backend, so train/serve skew cannot
creep in. The input contract (all int64, 0 = missing or padding):

    task [B], user [B], history [B,H], query_tokens [B,Q], anchor_item [B], category [B],
    candidates [B,N]  ->  scores [B,N]

An artifact with time features (:mod:`unirank.artifact.activity`) takes one more input, float32
``candidate_time [B,N,3]``: each candidate's recent popularity and age at the request's time,
computed here from the encoder's :class:`ItemActivity` (older artifacts have no such input).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from unirank.artifact.activity import ItemActivity
from unirank.artifact.catalog import Catalog
from unirank.artifact.tasks import TaskType
from unirank.artifact.text import tokenize

INPUT_NAMES: tuple[str, ...] = (
    "task",
    "user",
    "history",
    "query_tokens",
    "anchor_item",
    "category",
    "candidates",
)
OUTPUT_NAME = "scores"
TIME_INPUT = "candidate_time"
"""The float32 [B, N, 3] time features of each candidate, in graphs trained with them."""


def input_names(time_features: bool) -> tuple[str, ...]:
    """The serving graph's inputs, in order."""
    return (*INPUT_NAMES, TIME_INPUT) if time_features else INPUT_NAMES


@dataclass(frozen=True)
class Context:
    """A use-case neutral request context. Fields a use-case lacks keep their defaults."""

    task: TaskType
    user_id: str = ""
    history_item_ids: tuple[str, ...] = ()
    query: str = ""
    anchor_item_id: str = ""
    category_id: str = ""


@dataclass
class EncodedContext:
    """One context resolved against the artifact's vocabularies (candidates not included)."""

    task: int
    user: int
    history: np.ndarray
    query_tokens: np.ndarray
    anchor_item: int
    category: int
    unknown: list[str] = field(default_factory=list)
    """Names of context fields whose ids the artifact does not know (cold start)."""


@dataclass
class ModelInputs:
    """A batch of model inputs in the contract's order."""

    task: np.ndarray
    user: np.ndarray
    history: np.ndarray
    query_tokens: np.ndarray
    anchor_item: np.ndarray
    category: np.ndarray
    candidates: np.ndarray
    candidate_time: np.ndarray | None = None
    """float32 [B, N, 3] for a graph with time features; None for one without."""

    def as_dict(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in INPUT_NAMES}
        if self.candidate_time is not None:
            out[TIME_INPUT] = self.candidate_time
        return out

    def __len__(self) -> int:
        return int(self.task.shape[0])


class FeatureEncoder:
    """Turns contexts and candidate item indices into model inputs for one catalogue."""

    def __init__(
        self,
        catalog: Catalog,
        max_history: int = 20,
        max_query_tokens: int = 8,
        activity: ItemActivity | None = None,
    ) -> None:
        if max_history < 1 or max_query_tokens < 1:
            raise ValueError("max_history and max_query_tokens must be >= 1")
        self.catalog = catalog
        self.max_history = max_history
        self.max_query_tokens = max_query_tokens
        self.activity = activity
        """The items' recent activity, for a model with time features (None: a model without);
        the server folds recorded events into it."""

    def history_indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """The most recent ``max_history`` known items, most recent last, left-aligned, 0-padded."""
        known = self.catalog.items.known_indices(item_ids)[-self.max_history :]
        return np.array(known + [0] * (self.max_history - len(known)), dtype=np.int64)

    def query_indices(self, query: str) -> np.ndarray:
        """Known query tokens in order, 0-padded to ``max_query_tokens``."""
        known = self.catalog.tokens.known_indices(tokenize(query))[: self.max_query_tokens] if query else []
        return np.array(known + [0] * (self.max_query_tokens - len(known)), dtype=np.int64)

    def encode(self, context: Context) -> EncodedContext:
        catalog = self.catalog
        unknown: list[str] = []
        user = catalog.users.index(context.user_id)
        if context.user_id and not user:
            unknown.append("user_id")
        anchor = catalog.items.index(context.anchor_item_id)
        if context.anchor_item_id and not anchor:
            unknown.append("anchor_item_id")
        category = catalog.categories.index_ignoring_case(context.category_id)
        if context.category_id and not category:
            unknown.append("category_id")
        query_tokens = self.query_indices(context.query)
        if context.query and not query_tokens.any():
            unknown.append("query")
        return EncodedContext(
            task=int(context.task),
            user=user,
            history=self.history_indices(context.history_item_ids),
            query_tokens=query_tokens,
            anchor_item=anchor,
            category=category,
            unknown=unknown,
        )

    def batch(
        self,
        encoded: Sequence[EncodedContext],
        candidates: np.ndarray,
        at_ms: float | np.ndarray | None = None,
    ) -> ModelInputs:
        """Stack encoded contexts with a [B, N] int64 candidate matrix (0 = padding); with time
        features, each candidate's at the request time ``at_ms`` (Unix ms, one for the batch or
        one per row [B]; None: now, or the newest event of archived logs, ``ItemActivity.clock_ms``)."""
        if candidates.ndim != 2 or candidates.shape[0] != len(encoded):
            raise ValueError(f"candidates must be [B={len(encoded)}, N], got {candidates.shape}")
        candidate_time = None
        if self.activity is not None:
            when = self.activity.clock_ms(time.time() * 1000.0) if at_ms is None else at_ms
            times = np.broadcast_to(np.asarray(when, dtype=np.float64), (len(encoded),))
            candidate_time = self.activity.features(candidates, times)
        # np.array over a list: one C call per input, cheap for the online batch of one and for 64.
        return ModelInputs(
            task=np.array([e.task for e in encoded], dtype=np.int64),
            user=np.array([e.user for e in encoded], dtype=np.int64),
            history=np.array([e.history for e in encoded], dtype=np.int64),
            query_tokens=np.array([e.query_tokens for e in encoded], dtype=np.int64),
            anchor_item=np.array([e.anchor_item for e in encoded], dtype=np.int64),
            category=np.array([e.category for e in encoded], dtype=np.int64),
            candidates=np.ascontiguousarray(candidates, dtype=np.int64),
            candidate_time=candidate_time,
        )
