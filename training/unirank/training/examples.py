"""Labelled examples and what they are cut by: the per-user split, the examples themselves (columnar,
CSR positives) and each user's play history; the label functions (labels.py) produce them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unirank.artifact import Catalog, Context
from unirank.training.logs import EventType, LogData

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2


@dataclass(frozen=True)
class UserSplit:
    """Each user's own timeline cut into train / validation / test by the share of their events.

    A user's events at or after ``validation_start_ms[u]`` are validation, at or after
    ``test_start_ms[u]`` test. Cutting per user (rather than at one global time) gives every user
    history to learn from and a future to test on; cutting at a time (rather than a count) keeps
    events with equal timestamps on the same side.
    """

    validation_start_ms: np.ndarray
    test_start_ms: np.ndarray
    fractions: tuple[float, float, float]

    def assign(self, user: np.ndarray, timestamp_ms: np.ndarray) -> np.ndarray:
        """int8 index into :data:`SPLITS` per (user, time)."""
        split = np.zeros(len(user), dtype=np.int8)
        split[timestamp_ms >= self.validation_start_ms[user]] = VALIDATION
        split[timestamp_ms >= self.test_start_ms[user]] = TEST
        return split

    @classmethod
    def from_logs(cls, log: LogData, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> UserSplit:
        """Cut each user's events at the ``fractions`` quantiles of their count."""
        if len(fractions) != 3 or min(fractions) <= 0:
            raise ValueError(f"need three positive split fractions, got {fractions}")
        total = sum(fractions)
        # A user's timeline is their interactions; texts only place users who have nothing else.
        has_events = np.zeros(log.n_users, dtype=bool)
        has_events[log.events.user] = True
        texts_only = ~has_events[log.texts.user]
        users = np.concatenate([log.events.user, log.texts.user[texts_only]])
        times = np.concatenate([log.events.timestamp_ms, log.texts.timestamp_ms[texts_only]])
        order = np.lexsort((times, users))
        users, times = users[order], times[order]
        counts = np.bincount(users, minlength=log.n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        never = np.iinfo(np.int64).max

        def cut(share: float) -> np.ndarray:
            position = np.floor(counts * share + 1e-9).astype(np.int64)  # 10 * 0.8 is 7.999...
            inside = position < counts
            out = np.full(log.n_users, never, dtype=np.int64)
            out[inside] = times[starts[inside] + position[inside]]
            return out

        return cls(
            validation_start_ms=cut(fractions[0] / total),
            test_start_ms=cut((fractions[0] + fractions[1]) / total),
            fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
        )


@dataclass
class Examples:
    """Labelled examples in the one request-context schema, columnar, any mix of tasks.

    Item references are rows of ``LogData.items``. Positives and extra exclusions are CSR lists:
    example r's positives are ``positive_items[positive_indptr[r]:positive_indptr[r + 1]]``.
    """

    task: np.ndarray
    """int64 :class:`TaskType` per example."""
    contexts: list[Context]
    user: np.ndarray
    """int64 row into ``LogData.user_ids``."""
    timestamp_ms: np.ndarray
    """int64 time of the label; the history is everything the user played strictly before it."""
    split: np.ndarray
    """int8 index into :data:`SPLITS`."""
    positive_indptr: np.ndarray
    positive_items: np.ndarray
    exclude_seen: np.ndarray
    """bool: the use-case never recommends what the user already played (notification, category)."""
    excluded_indptr: np.ndarray
    excluded_items: np.ndarray
    """Further items never recommended for the context (a related request's anchor)."""

    def __len__(self) -> int:
        return len(self.contexts)

    def positives(self, row: int) -> np.ndarray:
        return self.positive_items[self.positive_indptr[row] : self.positive_indptr[row + 1]]

    def excluded(self, row: int) -> np.ndarray:
        return self.excluded_items[self.excluded_indptr[row] : self.excluded_indptr[row + 1]]

    def take(self, rows: np.ndarray) -> Examples:
        positive_indptr, positive_items = take_csr(self.positive_indptr, self.positive_items, rows)
        excluded_indptr, excluded_items = take_csr(self.excluded_indptr, self.excluded_items, rows)
        return Examples(
            task=self.task[rows],
            contexts=[self.contexts[i] for i in rows.tolist()],
            user=self.user[rows],
            timestamp_ms=self.timestamp_ms[rows],
            split=self.split[rows],
            positive_indptr=positive_indptr,
            positive_items=positive_items,
            exclude_seen=self.exclude_seen[rows],
            excluded_indptr=excluded_indptr,
            excluded_items=excluded_items,
        )

    @classmethod
    def empty(cls) -> Examples:
        none = np.zeros(0, dtype=np.int64)
        return cls(
            task=none,
            contexts=[],
            user=none,
            timestamp_ms=none,
            split=np.zeros(0, dtype=np.int8),
            positive_indptr=np.zeros(1, dtype=np.int64),
            positive_items=none,
            exclude_seen=np.zeros(0, dtype=bool),
            excluded_indptr=np.zeros(1, dtype=np.int64),
            excluded_items=none,
        )

    @classmethod
    def concat(cls, parts: Sequence[Examples]) -> Examples:
        """Merge parts into one set ordered by time (stable, so equal times keep part order)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()

        def csr(indptr_name: str, items_name: str) -> tuple[np.ndarray, np.ndarray]:
            lengths = np.concatenate([np.diff(getattr(p, indptr_name)) for p in parts])
            indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=indptr[1:])
            return indptr, np.concatenate([getattr(p, items_name) for p in parts]).astype(np.int64)

        positive_indptr, positive_items = csr("positive_indptr", "positive_items")
        excluded_indptr, excluded_items = csr("excluded_indptr", "excluded_items")
        merged = cls(
            task=np.concatenate([p.task for p in parts]),
            contexts=[c for p in parts for c in p.contexts],
            user=np.concatenate([p.user for p in parts]),
            timestamp_ms=np.concatenate([p.timestamp_ms for p in parts]),
            split=np.concatenate([p.split for p in parts]),
            positive_indptr=positive_indptr,
            positive_items=positive_items,
            exclude_seen=np.concatenate([p.exclude_seen for p in parts]),
            excluded_indptr=excluded_indptr,
            excluded_items=excluded_items,
        )
        return merged.take(np.argsort(merged.timestamp_ms, kind="stable"))


def take_csr(indptr: np.ndarray, items: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    out_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_indptr[1:])
    if not out_indptr[-1]:
        return out_indptr, items[:0].astype(np.int64)
    # Gather every [start, end) range at once: position k of the output reads items[start + offset].
    offsets = np.arange(out_indptr[-1]) - np.repeat(out_indptr[:-1], lengths)
    return out_indptr, items[np.repeat(starts, lengths) + offsets].astype(np.int64)


def csr_from_lists(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=indptr[1:])
    flat = np.fromiter((x for row in lists for x in row), dtype=np.int64, count=int(indptr[-1]))
    return indptr, flat


class PlayHistory:
    """Each user's plays in time order, to answer "what had this user played before t"."""

    def __init__(self, log: LogData) -> None:
        plays = log.events_of(EventType.PLAY)
        order = np.lexsort((plays.timestamp_ms, plays.user))
        self.user = plays.user[order]
        self.time = plays.timestamp_ms[order]
        self.item = plays.item[order]
        self.rating = plays.rating[order]
        self.weight = plays.weight[order]
        self.item_ids = log.items.item_ids
        self._user_start = np.searchsorted(self.user, np.arange(log.n_users + 1), side="left")
        # A play is a first engagement when the user never played the item before.
        by_pair = np.lexsort((np.arange(len(self.item)), self.item, self.user))
        first = np.ones(len(self.item), dtype=bool)
        if len(by_pair):
            same = (self.user[by_pair][1:] == self.user[by_pair][:-1]) & (
                self.item[by_pair][1:] == self.item[by_pair][:-1]
            )
            first[by_pair[1:][same]] = False
        self.first = first

    def __len__(self) -> int:
        return len(self.item)

    def user_range(self, user: int) -> tuple[int, int]:
        return int(self._user_start[user]), int(self._user_start[user + 1])

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


def cap_evaluation_rows(examples: Examples, limit: int, seed: int) -> Examples:
    """Keep every training row and at most ``limit`` validation / test rows per (task, split, user)."""
    if not len(examples) or limit <= 0:
        return examples
    priority = np.random.default_rng(seed + 2).random(len(examples))
    order = np.lexsort((priority, examples.user, examples.split, examples.task))
    key = np.stack([examples.task[order], examples.split[order], examples.user[order]], axis=1)
    starts = np.r_[True, (key[1:] != key[:-1]).any(axis=1)]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - group_start
    keep = (examples.split == TRAIN) | (rank < limit)
    return examples if keep.all() else examples.take(np.flatnonzero(keep))


def events_split(log: LogData, split: UserSplit) -> np.ndarray:
    """int8 split of every event of ``log.events``."""
    return split.assign(log.events.user, log.events.timestamp_ms)


@dataclass
class TrainingPlays:
    """Who played what in the training split: the matrix the classic peers and ALS init learn from."""

    user_items: Any
    """scipy CSR [n_users, n_items + 1] over log users x catalogue columns: 1 where played (once)."""
    user_index: np.ndarray
    """int64 per log user: its catalogue (model) index."""

    @classmethod
    def from_logs(cls, log: LogData, split: UserSplit, catalog: Catalog) -> TrainingPlays:
        from scipy.sparse import csr_matrix

        plays = PlayHistory(log)
        to_index = np.array([catalog.items.index(x) for x in log.items.item_ids], dtype=np.int64)
        train = split.assign(plays.user, plays.time) == TRAIN
        users, items = plays.user[train], to_index[plays.item[train]]
        matrix = csr_matrix(
            (np.ones(len(users), dtype=np.float32), (users, items)), shape=(log.n_users, len(catalog.items))
        )
        matrix.data[:] = 1.0  # repeated plays count once
        user_index = np.array([catalog.users.index(x) for x in log.user_ids], dtype=np.int64)
        return cls(user_items=matrix, user_index=user_index)
