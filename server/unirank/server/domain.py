"""Transport-neutral request / response types of the ranking pipeline."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from unirank.artifact import Context, TaskType


class Source(enum.IntEnum):
    """Candidate sources; values equal ``unirank.v1.RetrievalSource``."""

    UNSPECIFIED = 0
    CALLER = 1
    HISTORY = 2
    RELATED = 3
    LEXICAL = 4
    EMBEDDING = 5
    CATEGORY = 6
    POPULAR = 7
    NEW_RELEASES = 8


class FallbackReason(enum.IntEnum):
    """Why a fallback answered; values equal ``unirank.v1.FallbackReason``."""

    NONE = 0
    COLD_START = 1
    DEADLINE = 2
    BACKEND_ERROR = 3
    NO_CANDIDATES = 4


@dataclass(frozen=True)
class RankOptions:
    max_results: int = 0
    candidate_item_ids: tuple[str, ...] = ()
    excluded_item_ids: tuple[str, ...] = ()
    debug: bool = False


@dataclass(frozen=True)
class RankRequest:
    context: Context
    options: RankOptions = RankOptions()
    request_id: str = ""
    country: str = ""
    language: str = ""
    device: str = ""
    event_time_unix_ms: int = 0
    window_years: int = 0
    """New-release window of a ``new_releases`` request; 0 is the default window."""

    @property
    def task(self) -> TaskType:
        return self.context.task


class RankedItem(NamedTuple):
    """One answer row (a tuple: ten of them are built per request)."""

    item_id: str
    score: float
    title: str
    category_id: str
    source: Source


SOURCES: tuple[Source, ...] = tuple(Source)
"""``Source`` members by value (the values are 0..8): a tuple index instead of an enum call."""


@dataclass
class RankResponse:
    request_id: str
    task: TaskType
    items: list[RankedItem]
    model_version: str
    profile: str
    served_from_cache: bool = False
    fallback_reason: FallbackReason = FallbackReason.NONE
    fallback_detail: str = ""
    timings: list[tuple[str, float]] = field(default_factory=list)
    stored_history: bool = False
    """The request sent no history and the known user's history from the artifact was used."""
    impression_id: str = ""
    """Server-issued id of this answer (a fresh one for every answer, cached ones too)."""
    arm: str = "stable"
    """The rollout arm that answered: ``stable``, or ``canary`` where a new version is judged."""

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not FallbackReason.NONE


@dataclass
class Candidates:
    """Candidate items with their sources and, after scoring, their scores (sorted best first)."""

    items: np.ndarray  # int64 item indices
    sources: np.ndarray  # int8 Source values
    scores: np.ndarray | None = None  # float32, aligned with items

    def keep(self, mask: np.ndarray) -> Candidates:
        return Candidates(
            self.items[mask], self.sources[mask], None if self.scores is None else self.scores[mask]
        )

    def __len__(self) -> int:
        return int(self.items.shape[0])


def in_sorted(values: np.ndarray, sorted_items: np.ndarray) -> np.ndarray:
    """A bool mask: which of ``values`` are in ``sorted_items`` (ascending). A binary search per
    value: O(candidates), where a flag table would cost the catalogue and ``np.isin`` sorts both."""
    if not len(sorted_items):
        return np.zeros(len(values), dtype=bool)
    position = np.searchsorted(sorted_items, values)
    np.minimum(position, len(sorted_items) - 1, out=position)
    return sorted_items[position] == values


@dataclass
class RuleContext:
    """What a rule may look at besides the candidates."""

    history_items: np.ndarray  # known history item indices of the request
    anchor_item: int
    maturity: np.ndarray  # per item index
    release_year: np.ndarray
    primary_category: np.ndarray  # per item index, category index
    title_keys: np.ndarray  # per item index, an id of the normalised title


@dataclass(frozen=True)
class TaskInfo:
    """One use-case of the registry as this server serves it (GetModelInfo)."""

    task: TaskType
    served: bool
    """The profile serves it and the model has a trained head for it."""
    offline_metrics: dict[str, float]


@dataclass(frozen=True)
class ModelInfo:
    """The serving model version and what it serves (GetModelInfo)."""

    model_version: str
    schema_version: str
    profile: str
    backend: str
    device: str
    tasks: list[TaskInfo]
    created_unix_ms: int
    catalog_size: int


class AdmissionGate(Protocol):
    """Execution slots a RecommendBatch member waits for, like a call of its own
    (``unirank.server.admission.Admission``)."""

    async def enter(self, task: str = "", remaining_s: float | None = None) -> None: ...

    def exit(self) -> None: ...

    def served(self, task: str, seconds: float) -> None: ...
