"""Plain typed values the client speaks in: requests, rankings and model info, free of protobuf."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Notification:
    """Rank items to push to the request's user."""


@dataclass(frozen=True)
class RelatedItems:
    """Rank items like ``anchor_item_id``."""

    anchor_item_id: str


@dataclass(frozen=True)
class Search:
    """Rank items matching the free-text ``query``."""

    query: str


@dataclass(frozen=True)
class Category:
    """Rank items for the category / genre row ``category_id``."""

    category_id: str


@dataclass(frozen=True)
class NewReleases:
    """Rank recently released items for the request's user.

    ``window_years``: how many release years count as new, ending at the request's year; 0 means
    the server's default window.
    """

    window_years: int = 0


# The use-case of a request; mirrors the ``oneof task`` of ``unirank.v1.RequestContext``.
Task = Notification | RelatedItems | Search | Category | NewReleases


@dataclass(frozen=True)
class RecommendationRequest:
    """One request for one use-case: the context fields and the per-request options together."""

    task: Task
    """The use-case and its own context."""
    user_id: str = ""
    """Empty means anonymous; the server's fallback decides what that gets."""
    history_item_ids: tuple[str, ...] = ()
    """Items the user engaged with recently, most recent last."""
    request_id: str = ""
    """Caller's id for this request; the server echoes it back."""
    country: str = ""
    """ISO 3166-1 alpha-2 country code, e.g. "US"."""
    language: str = ""
    """BCP 47 language tag, e.g. "en"."""
    device: str = ""
    """Free-form device class, e.g. "tv", "mobile", "web"."""
    event_time_unix_ms: int = 0
    """When the request happened, Unix milliseconds; 0 means now."""
    max_results: int = 0
    """How many items to return; 0 means the profile's default."""
    candidate_item_ids: tuple[str, ...] = ()
    """Candidates to rank instead of running retrieval; empty means the server retrieves."""
    excluded_item_ids: tuple[str, ...] = ()
    """Items that must not appear in the response."""
    debug: bool = False
    """Ask for per-stage timings and each item's retrieval source."""


@dataclass(frozen=True)
class RankedItem:
    """One item of a ranking, best first."""

    item_id: str
    score: float
    title: str = ""
    category_id: str = ""
    retrieval_source: str = ""
    """Short name such as "lexical" or "popular"; empty unless the request asked for debug."""


@dataclass(frozen=True)
class Ranking:
    """The answer to one request."""

    items: list[RankedItem] = field(default_factory=list)
    request_id: str = ""
    task_type: str = ""
    """Short task name: "notification", "related_items", "search", "category" or "new_releases"."""
    model_version: str = ""
    profile: str = ""
    served_from_cache: bool = False
    fallback: bool = False
    """True when a fallback answered instead of the model."""
    fallback_reason: str = ""
    """Short name such as "cold_start" or "deadline"; empty when no fallback answered."""
    fallback_detail: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    """Stage name -> milliseconds, in pipeline order; empty unless the request asked for debug."""
    stored_history: bool = False
    """The request sent no history and the server used the known user's history from the model
    artifact (the items in it are excluded like any seen item)."""
    impression_id: str = ""
    """Server-issued id of this answer: send it back in ``Event.impression_id`` (with the item's
    1-based position in ``items``) so clicks and plays are attributed to it."""
    arm: str = ""
    """Which arm of a canary rollout answered: "stable", or "canary" where a new model version is
    being judged on this use-case for this user."""

    @property
    def item_ids(self) -> list[str]:
        """The ranked item ids, best first."""
        return [item.item_id for item in self.items]


@dataclass(frozen=True)
class TaskInfo:
    """What a deployment does with one use-case."""

    task_type: str
    served: bool
    offline_metrics: dict[str, float] = field(default_factory=dict)
    """Offline metrics of the loaded model version on this task, e.g. {"ndcg@10": 0.41}."""


@dataclass(frozen=True)
class GateVerdict:
    """The offline promotion gate's verdict on one served use-case of a new version."""

    task: str
    metric: str
    """The metric compared, e.g. "ndcg@10"."""
    serving_value: float | None
    """The serving version's value (None: it has none)."""
    candidate_value: float | None
    """The new version's value (None: it has none)."""
    relative_change: float | None
    """(candidate - serving) / serving; None where a value is missing."""
    rows: int
    """Evaluation rows the new version's value rests on."""
    passed: bool
    reason: str
    source: str = "metrics"
    """"metrics" (each artifact's metrics.json) or "validation_log" (both re-scored on one log)."""


@dataclass(frozen=True)
class GateDecision:
    """The offline promotion gate's last decision on a new model version."""

    model_version: str
    """The version judged."""
    serving_version: str
    accepted: bool
    decided_unix_ms: int = 0
    tasks: list[GateVerdict] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInfo:
    """The loaded artifact and the deployment profile of a running server."""

    model_version: str
    schema_version: str = ""
    profile: str = ""
    backend: str = ""
    device: str = ""
    tasks: list[TaskInfo] = field(default_factory=list)
    created_unix_ms: int = 0
    catalog_size: int = 0
    last_gate: GateDecision | None = None
    """The offline gate's last decision since the server started (None: gate off or nothing judged)."""


@dataclass(frozen=True)
class Event:
    """One engagement to record: the user's next requests reflect it."""

    user_id: str
    item_id: str
    event_type: str = "play"
    """``play``, ``click``, ``search_click``, ``notification_open``, ``impression`` (the item was
    shown), ``play_start`` or ``play_complete``."""
    event_time_unix_ms: int = 0
    """When it happened; 0 means now (the server's clock)."""
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Unique id of this event (a fresh one per Event by default): recording the same Event again,
    e.g. retrying a call that failed, is recognised by the server and not counted twice."""
    impression_id: str = ""
    """``Ranking.impression_id`` of the answer that showed the item; empty: not attributed."""
    position: int = 0
    """1-based position of the item in that answer; 0: the server looks it up."""
    engagement_seconds: float = 0.0
    """Time the user spent with the item because of this event (e.g. seconds played)."""


@dataclass(frozen=True)
class RecordedEvents:
    accepted: int
    """Events stored in users' recent history."""
    ignored: int
    """Well-formed events about items the model does not know."""
    attributed: int = 0
    """Events attributed to an answer the server issued (their ``impression_id``)."""
    unattributed: int = 0
    """Events naming an impression the server could not attribute them to (unknown or expired
    impression, item not in that answer, repeated event id)."""
