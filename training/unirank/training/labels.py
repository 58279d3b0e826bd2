"""Label functions: canonical logs -> (request context, positive item, time) examples per task.

One function per use-case, registered by task name in :data:`LABEL_FUNCTIONS`; adding a use-case
means adding its task to ``unirank.artifact.tasks`` and one function here. Every example carries
the user's plays strictly before its event as history, so no label leaks into its own features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from unirank.artifact import TASKS, Context, TaskType
from unirank.training.logs import EventTable, EventType, LogData


@dataclass
class Examples:
    """Labelled examples in the one request-context schema, columnar, any mix of tasks."""

    task: np.ndarray
    """int64 :class:`TaskType` per example."""
    contexts: list[Context]
    positive_item_ids: list[str]
    timestamp_ms: np.ndarray
    """int64 time of the labelled event."""
    excluded_item_ids: list[tuple[str, ...]]
    """Items the use-case never recommends for this context (e.g. already played, the anchor)."""

    def __len__(self) -> int:
        return len(self.contexts)

    @classmethod
    def concat(cls, parts: Sequence[Examples]) -> Examples:
        """Merge parts into one set ordered by time (stable, so equal times keep part order)."""
        task = np.concatenate([p.task for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        times = np.concatenate([p.timestamp_ms for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        contexts = [c for p in parts for c in p.contexts]
        positives = [x for p in parts for x in p.positive_item_ids]
        excluded = [x for p in parts for x in p.excluded_item_ids]
        order = np.argsort(times, kind="stable")
        rows = order.tolist()
        return cls(
            task=task[order],
            contexts=[contexts[i] for i in rows],
            positive_item_ids=[positives[i] for i in rows],
            timestamp_ms=times[order],
            excluded_item_ids=[excluded[i] for i in rows],
        )


class PlayHistory:
    """Each user's plays in time order, to answer "what had this user played before t"."""

    def __init__(self, log: LogData) -> None:
        plays = log.events_of(EventType.PLAY)
        order = np.lexsort((plays.timestamp_ms, plays.user))
        self.user = plays.user[order]
        self.time = plays.timestamp_ms[order]
        self.item = plays.item[order]
        self.item_ids = log.items.item_ids
        self._user_start = np.searchsorted(self.user, np.arange(log.n_users + 1), side="left")

    def before(self, users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per event, [start, end) into the sorted plays: the user's plays with time < the event's."""
        start = self._user_start[users]
        if not len(self.time):
            return start, start.copy()
        # One searchsorted over a (user, time) composite key; side="left" makes "before" strict.
        origin = int(self.time.min())
        stride = int(self.time.max()) - origin + 2
        if stride * (len(self._user_start) + 1) < 2**62:
            play_key = self.user * stride + (self.time - origin)
            key = users * stride + np.clip(times - origin, 0, stride - 1)
            return start, np.searchsorted(play_key, key, side="left")
        stop = self._user_start[users + 1]  # keys would overflow: search per user instead
        end = np.array(
            [
                lo + int(np.searchsorted(self.time[lo:hi], t, side="left"))
                for lo, hi, t in zip(start.tolist(), stop.tolist(), times.tolist(), strict=True)
            ],
            dtype=np.int64,
        )
        return start, end

    def recent_ids(self, users: np.ndarray, times: np.ndarray, limit: int) -> list[tuple[str, ...]]:
        """The last ``limit`` item ids each user played strictly before each time, oldest first."""
        start, end = self.before(users, times)
        ids = self.item_ids
        return [
            tuple(ids[j] for j in self.item[max(lo, hi - limit) : hi].tolist())
            for lo, hi in zip(start.tolist(), end.tolist(), strict=True)
        ]

    def all_ids(self, users: np.ndarray, times: np.ndarray) -> list[tuple[str, ...]]:
        """Every distinct item id each user played strictly before each time."""
        start, end = self.before(users, times)
        ids = self.item_ids
        return [
            tuple(ids[j] for j in dict.fromkeys(self.item[lo:hi].tolist()))
            for lo, hi in zip(start.tolist(), end.tolist(), strict=True)
        ]


LabelFunction = Callable[[LogData, PlayHistory, int], Examples]
"""(logs, play history, max history length) -> the examples of one task."""


def _examples(
    task: TaskType,
    events: EventTable,
    log: LogData,
    contexts: list[Context],
    excluded: list[tuple[str, ...]] | None = None,
) -> Examples:
    item_ids = log.items.item_ids
    return Examples(
        task=np.full(len(events), int(task), dtype=np.int64),
        contexts=contexts,
        positive_item_ids=[item_ids[i] for i in events.item.tolist()],
        timestamp_ms=events.timestamp_ms.copy(),
        excluded_item_ids=excluded if excluded is not None else [()] * len(events),
    )


def notification_labels(log: LogData, plays: PlayHistory, max_history: int) -> Examples:
    """User -> the item whose notification they opened; everything already played is excluded."""
    events = log.events_of(EventType.NOTIFICATION_OPEN)
    histories = plays.recent_ids(events.user, events.timestamp_ms, max_history)
    contexts = [
        Context(TaskType.NOTIFICATION, user_id=log.user_ids[u], history_item_ids=h)
        for u, h in zip(events.user.tolist(), histories, strict=True)
    ]
    return _examples(
        TaskType.NOTIFICATION, events, log, contexts, plays.all_ids(events.user, events.timestamp_ms)
    )


def related_labels(log: LogData, plays: PlayHistory, max_history: int) -> Examples:
    """Anchor item -> the related item clicked on its page; the anchor itself is excluded."""
    events = log.events_of(EventType.RELATED_CLICK)
    histories = plays.recent_ids(events.user, events.timestamp_ms, max_history)
    item_ids = log.items.item_ids
    anchors = [item_ids[a] for a in events.anchor_item.tolist()]
    contexts = [
        Context(TaskType.RELATED_ITEMS, user_id=log.user_ids[u], history_item_ids=h, anchor_item_id=a)
        for u, h, a in zip(events.user.tolist(), histories, anchors, strict=True)
    ]
    return _examples(TaskType.RELATED_ITEMS, events, log, contexts, [(a,) for a in anchors])


def search_labels(log: LogData, plays: PlayHistory, max_history: int) -> Examples:
    """Query text -> the item clicked in its results."""
    events = log.events_of(EventType.SEARCH_CLICK)
    histories = plays.recent_ids(events.user, events.timestamp_ms, max_history)
    contexts = [
        Context(TaskType.SEARCH, user_id=log.user_ids[u], history_item_ids=h, query=q)
        for u, h, q in zip(events.user.tolist(), histories, events.query, strict=True)
    ]
    return _examples(TaskType.SEARCH, events, log, contexts)


def category_labels(log: LogData, plays: PlayHistory, max_history: int) -> Examples:
    """Category row -> the item clicked in it."""
    events = log.events_of(EventType.CATEGORY_CLICK)
    histories = plays.recent_ids(events.user, events.timestamp_ms, max_history)
    categories = [log.category_ids[c] for c in events.category.tolist()]
    contexts = [
        Context(TaskType.CATEGORY, user_id=log.user_ids[u], history_item_ids=h, category_id=c)
        for u, h, c in zip(events.user.tolist(), histories, categories, strict=True)
    ]
    return _examples(TaskType.CATEGORY, events, log, contexts)


LABEL_FUNCTIONS: Mapping[str, LabelFunction] = MappingProxyType(
    {
        "notification": notification_labels,
        "related_items": related_labels,
        "search": search_labels,
        "category": category_labels,
    }
)
"""Task name -> its label function; read-only (a new use-case is a code change, not a mutation)."""


def make_examples(
    log: LogData,
    max_history: int,
    label_functions: Mapping[str, LabelFunction] = LABEL_FUNCTIONS,
) -> Examples:
    """Every registered task's examples, merged into one time-ordered set."""
    unknown = sorted(set(label_functions) - {spec.name for spec in TASKS})
    if unknown:
        raise ValueError(f"label functions for unknown tasks {unknown}; add them to unirank.artifact.tasks")
    plays = PlayHistory(log)
    return Examples.concat([fn(log, plays, max_history) for fn in label_functions.values()])
