"""Label functions: canonical logs -> (request context, positive items, time, split) examples per task.

One function per use-case, registered by task name in :data:`LABEL_FUNCTIONS`; adding a use-case
means adding its task to ``unirank.artifact.tasks`` and one function here. Each function reads the
use-case's own surface events when the logs have them (a platform that logs notification opens,
related clicks, searches and category clicks, like the synthetic generator) and otherwise derives
labels from plain engagements and user texts (MovieLens ratings and tags). docs/data.md gives the
reasoning; the rules that keep labels from leaking into features are:

* every example's history is the user's plays strictly before the example's time;
* the split is the user's own timeline (:class:`UserSplit`): an example belongs to the split of its
  label time, and a validation or test example's positives all lie inside that split's window;
* positives are first engagements (never an item the user had already engaged with), so
  excluding seen items at evaluation never hides a label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from unirank.artifact import TASKS, Context, TaskType
from unirank.artifact.catalog import is_new_release
from unirank.artifact.text import tokenize
from unirank.training.logs import EventType, LogData

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "at",
        "by",
        "de",
        "del",
        "der",
        "des",
        "di",
        "die",
        "das",
        "du",
        "el",
        "en",
        "for",
        "from",
        "how",
        "i",
        "il",
        "in",
        "is",
        "it",
        "la",
        "las",
        "le",
        "les",
        "los",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "part",
        "the",
        "to",
        "too",
        "un",
        "une",
        "vs",
        "with",
        "ii",
        "iii",
        "iv",
    ]
)
"""Words too common to be a search on their own (title queries never use them)."""


@dataclass(frozen=True)
class LabelConfig:
    """How labels are derived from plain engagements; fixed per data set (not per training seed)."""

    future_window: int = 10
    """Notification and category training rows: the next N first engagements are the positives."""
    positive_rating: float = 4.0
    """An engagement counts as liked when rated at least this (unrated ones: when weight > 0)."""
    related_max_gap_s: int = 86_400
    """Related items: the next liked item must follow the anchor within this many seconds."""
    search_title_share: float = 0.25
    """Share of liked first engagements that also become a search with words of the title."""
    search_two_word_share: float = 0.3
    """Share of title searches with two title words instead of one."""
    max_items_per_user_text: int = 20
    """A text one user put on more items than this is a list label ("in my queue"), not a search."""
    max_train_rows_per_task: int = 1_000_000
    """Derived training rows kept per task (a seeded subset beyond it), so ml-25m fits in memory."""
    max_evaluation_rows_per_user: int = 50
    """Validation and test keep at most this many rows per user and task (a seeded choice), so a few
    prolific users (one MovieLens user wrote 40 % of the tags) cannot decide a metric alone."""
    seed: int = 0
    """Seeds the choices made while deriving (category of a row, words of a title query)."""


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


def _csr_from_lists(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class LabelContext:
    """What every label function reads besides the logs."""

    plays: PlayHistory
    split: UserSplit
    max_history: int
    config: LabelConfig = field(default_factory=LabelConfig)


LabelFunction = Callable[[LogData, LabelContext], Examples]
"""(logs, label context) -> the examples of one task."""


def _build(
    task: TaskType,
    log: LogData,
    ctx: LabelContext,
    users: np.ndarray,
    times: np.ndarray,
    positives: Sequence[Sequence[int]] | np.ndarray,
    split: np.ndarray | None = None,
    exclude_seen: bool = False,
    anchors: np.ndarray | None = None,
    queries: Sequence[str] | None = None,
    categories: np.ndarray | None = None,
) -> Examples:
    """Examples of one task from per-row columns; contexts get the history strictly before ``times``."""
    n = len(users)
    users = np.asarray(users, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    histories = ctx.plays.recent_ids(users, times, ctx.max_history)
    item_ids = log.items.item_ids
    user_ids = log.user_ids
    contexts = []
    for r in range(n):
        contexts.append(
            Context(
                task,
                user_id=user_ids[int(users[r])],
                history_item_ids=histories[r],
                query=queries[r] if queries is not None else "",
                anchor_item_id=item_ids[int(anchors[r])] if anchors is not None else "",
                category_id=log.category_ids[int(categories[r])] if categories is not None else "",
            )
        )
    if isinstance(positives, np.ndarray) and positives.ndim == 1:
        positive_indptr = np.arange(n + 1, dtype=np.int64)
        positive_items = positives.astype(np.int64)
    else:
        positive_indptr, positive_items = _csr_from_lists(positives)  # type: ignore[arg-type]
    if anchors is not None:
        excluded_indptr, excluded_items = (
            np.arange(n + 1, dtype=np.int64),
            np.asarray(anchors, dtype=np.int64),
        )
    else:
        excluded_indptr, excluded_items = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return Examples(
        task=np.full(n, int(task), dtype=np.int64),
        contexts=contexts,
        user=users,
        timestamp_ms=times,
        split=ctx.split.assign(users, times) if split is None else split.astype(np.int8),
        positive_indptr=positive_indptr,
        positive_items=positive_items,
        exclude_seen=np.full(n, exclude_seen, dtype=bool),
        excluded_indptr=excluded_indptr,
        excluded_items=excluded_items,
    )


# --- derived labels: shared pieces -----------------------------------------------------------


def _at_most(positions: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of the sorted ``positions`` (a seeded subset, still sorted)."""
    if limit <= 0 or len(positions) <= limit:
        return positions
    return np.sort(np.random.default_rng(seed + 3).choice(positions, size=limit, replace=False))


def _liked(plays: PlayHistory, config: LabelConfig) -> np.ndarray:
    """bool per sorted play: rated at least ``positive_rating``, or unrated with weight > 0."""
    rated = np.isfinite(plays.rating)
    return np.where(rated, plays.rating >= config.positive_rating, plays.weight > 0)


def _windows(
    users: np.ndarray, rows: np.ndarray, candidates: np.ndarray, items: np.ndarray, width: int
) -> list[list[int]]:
    """For each row position, the items of the next ``width`` candidate positions of the same user.

    ``rows`` and ``candidates`` are sorted positions into the same user-then-time ordered arrays;
    ``rows`` must be a subset of ``candidates``.
    """
    where = np.searchsorted(candidates, rows)
    out: list[list[int]] = []
    cand_users = users[candidates]
    n = len(candidates)
    for start, user in zip(where.tolist(), users[rows].tolist(), strict=True):
        stop = min(start + width, n)
        window = candidates[start:stop][cand_users[start:stop] == user]
        out.append(items[window].tolist())
    return out


def _window_rows(
    ctx: LabelContext, split_index: int, eligible: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Per user with eligible plays inside one split window: (users, window start times, items)."""
    plays = ctx.plays
    in_window = eligible & (ctx.split.assign(plays.user, plays.time) == split_index)
    positions = np.flatnonzero(in_window)
    users = np.unique(plays.user[positions])
    lists = [plays.item[positions[plays.user[positions] == u]].tolist() for u in users.tolist()]
    return users, starts[users], lists


def _user_rows(
    task: TaskType,
    log: LogData,
    ctx: LabelContext,
    rows: np.ndarray,
    positives: Sequence[Sequence[int]],
    eligible: Callable[[np.ndarray], np.ndarray],
) -> Examples:
    """A user's-future task (what they engage with next; already played items excluded): training
    rows at the sorted play positions ``rows`` with their ``positives``, and per user one validation
    and one test row at the start of that split's window, whose positives are the window's plays
    that ``eligible(starts)`` keeps (a mask over the sorted plays, given each play's user's start)."""
    plays = ctx.plays
    parts = [
        _build(
            task,
            log,
            ctx,
            plays.user[rows],
            plays.time[rows],
            positives,
            split=np.zeros(len(rows), dtype=np.int8),
            exclude_seen=True,
        )
    ]
    for split_index, starts in ((VALIDATION, ctx.split.validation_start_ms), (TEST, ctx.split.test_start_ms)):
        users, times, lists = _window_rows(ctx, split_index, eligible(starts[plays.user]), starts)
        parts.append(
            _build(
                task,
                log,
                ctx,
                users,
                times,
                lists,
                split=np.full(len(users), split_index, dtype=np.int8),
                exclude_seen=True,
            )
        )
    return Examples.concat(parts)


def notification_labels(log: LogData, ctx: LabelContext) -> Examples:
    """User -> the items they engage with next.

    With logged notification opens: the opened item, everything already played excluded. From
    plain engagements: a training row at each first engagement whose positives are the next
    ``future_window`` first engagements; one validation and one test row per user whose history is
    everything before the window and whose positives are every first engagement inside it.
    """
    events = log.events_of(EventType.NOTIFICATION_OPEN)
    if len(events):
        return _build(
            TaskType.NOTIFICATION, log, ctx, events.user, events.timestamp_ms, events.item, exclude_seen=True
        )
    plays, config = ctx.plays, ctx.config
    split = ctx.split.assign(plays.user, plays.time)
    start, end = plays.before(plays.user, plays.time)
    firsts = np.flatnonzero(plays.first & (split == TRAIN))
    rows = _at_most(firsts[(end - start)[firsts] >= 1], config.max_train_rows_per_task, config.seed)
    positives = _windows(plays.user, rows, firsts, plays.item, config.future_window)
    return _user_rows(TaskType.NOTIFICATION, log, ctx, rows, positives, lambda _starts: plays.first)


def related_labels(log: LogData, ctx: LabelContext) -> Examples:
    """Anchor item -> the related item engaged next; the anchor itself is excluded.

    With logged related clicks: the clicked item on the anchor's page. From plain engagements: a
    liked item -> the same user's next liked first engagement within ``related_max_gap_s``
    (already played items excluded as well, since a first engagement is never one of them).
    """
    events = log.events_of(EventType.RELATED_CLICK)
    if len(events):
        return _build(
            TaskType.RELATED_ITEMS,
            log,
            ctx,
            events.user,
            events.timestamp_ms,
            events.item,
            anchors=events.anchor_item,
        )
    plays, config = ctx.plays, ctx.config
    liked = np.flatnonzero(_liked(plays, config))
    prev, nxt = liked[:-1], liked[1:]
    ok = (
        (plays.user[prev] == plays.user[nxt])
        & (plays.time[nxt] - plays.time[prev] <= config.related_max_gap_s * 1000)
        & (plays.item[prev] != plays.item[nxt])
        & plays.first[nxt]
    )
    prev, nxt = prev[ok], nxt[ok]
    train = ctx.split.assign(plays.user[nxt], plays.time[nxt]) == TRAIN
    keep = np.union1d(
        np.flatnonzero(~train), _at_most(np.flatnonzero(train), config.max_train_rows_per_task, config.seed)
    )
    prev, nxt = prev[keep], nxt[keep]
    return _build(
        TaskType.RELATED_ITEMS,
        log,
        ctx,
        plays.user[nxt],
        plays.time[nxt],
        plays.item[nxt],
        exclude_seen=True,
        anchors=plays.item[prev],
    )


def title_query_words(log: LogData) -> tuple[list[list[str]], dict[str, int]]:
    """Per item, the title words a search may use (no stopwords, no bare numbers), and word -> titles."""
    words = []
    frequency: dict[str, int] = {}
    for title in log.items.titles:
        usable = [w for w in dict.fromkeys(tokenize(title)) if w not in STOPWORDS and not w.isdigit()]
        words.append(usable)
        for w in usable:
            frequency[w] = frequency.get(w, 0) + 1
    return words, frequency


def search_labels(log: LogData, ctx: LabelContext) -> Examples:
    """Query text -> the item engaged with.

    With logged search clicks: the clicked item for the typed query. From plain logs: every user
    text (a MovieLens tag) is a query for its item, and a share of liked first engagements become
    a search of one or two title words that other titles share too, so looking the title up is
    never enough on its own (the ranker must know which of the matches this user wants).
    """
    events = log.events_of(EventType.SEARCH_CLICK)
    if len(events):
        return _build(
            TaskType.SEARCH, log, ctx, events.user, events.timestamp_ms, events.item, queries=events.query
        )
    plays, config = ctx.plays, ctx.config
    rng = np.random.default_rng(config.seed)
    parts = []
    texts = log.texts
    if len(texts):
        lowered = [t.lower() for t in texts.text]
        uses: dict[tuple[int, str], int] = {}
        for u, t in zip(texts.user.tolist(), lowered, strict=True):
            uses[(u, t)] = uses.get((u, t), 0) + 1
        keep = np.array(
            [
                bool(tokenize(t)) and uses[(u, t)] <= config.max_items_per_user_text
                for u, t in zip(texts.user.tolist(), lowered, strict=True)
            ],
            dtype=bool,
        )
        rows = np.flatnonzero(keep)
        parts.append(
            _build(
                TaskType.SEARCH,
                log,
                ctx,
                texts.user[rows],
                texts.timestamp_ms[rows],
                texts.item[rows],
                queries=[texts.text[r] for r in rows.tolist()],
            )
        )
    words, frequency = title_query_words(log)
    candidates = np.flatnonzero(plays.first & _liked(plays, config))
    chosen = candidates[rng.random(len(candidates)) < config.search_title_share]
    in_train = ctx.split.assign(plays.user[chosen], plays.time[chosen]) == TRAIN
    chosen = chosen[
        np.union1d(
            np.flatnonzero(~in_train),
            _at_most(np.flatnonzero(in_train), config.max_train_rows_per_task, config.seed),
        )
    ]
    two = rng.random(len(chosen)) < config.search_two_word_share
    picks = rng.random((len(chosen), 2))
    rows_kept, queries = [], []
    for r, (position, pair) in enumerate(zip(chosen.tolist(), two.tolist(), strict=True)):
        title_words = words[int(plays.item[position])]
        shared = [w for w in title_words if frequency[w] >= 2]
        if not shared or len(title_words) < 2:
            continue  # typing the whole title, or a word no other title has, finds it: no ranking task
        first = shared[int(picks[r, 0] * len(shared))]
        query = [first]
        if pair and len(shared) > 1 and len(title_words) > 2:  # still not the whole title
            rest = [w for w in shared if w != first]
            query.append(rest[int(picks[r, 1] * len(rest))])
        rows_kept.append(position)
        queries.append(" ".join(query))
    kept = np.asarray(rows_kept, dtype=np.int64)
    parts.append(
        _build(
            TaskType.SEARCH, log, ctx, plays.user[kept], plays.time[kept], plays.item[kept], queries=queries
        )
    )
    return Examples.concat(parts)


def category_labels(log: LogData, ctx: LabelContext) -> Examples:
    """Category row -> the items engaged with in that category; candidates are the category's items.

    With logged category clicks: the item clicked in the row. From plain engagements: a training
    row at each first engagement, for one of its item's categories (a seeded choice), whose
    positives are the user's next ``future_window`` first engagements in that category; one
    validation and one test row per (user, category) with every first engagement in that category
    inside the window as positives. Already played items are excluded, as for notifications.
    """
    events = log.events_of(EventType.CATEGORY_CLICK)
    if len(events):
        return _build(
            TaskType.CATEGORY,
            log,
            ctx,
            events.user,
            events.timestamp_ms,
            events.item,
            categories=events.category,
        )
    plays, config = ctx.plays, ctx.config
    rng = np.random.default_rng(config.seed + 1)
    category_index = {c: i for i, c in enumerate(log.category_ids)}
    item_categories = [[category_index[c] for c in cats] for cats in log.items.categories]
    split = ctx.split.assign(plays.user, plays.time)
    start, end = plays.before(plays.user, plays.time)
    firsts = np.flatnonzero(plays.first & (split == TRAIN))
    rows = firsts[
        ((end - start)[firsts] >= 1)
        & np.array([bool(item_categories[i]) for i in plays.item[firsts].tolist()], dtype=bool)
    ]
    rows = _at_most(rows, config.max_train_rows_per_task, config.seed)
    picks = rng.random(len(rows))
    row_category = np.array(
        [
            item_categories[i][int(p * len(item_categories[i]))]
            for i, p in zip(plays.item[rows].tolist(), picks.tolist(), strict=True)
        ],
        dtype=np.int64,
    )
    parts = []
    for c in range(len(log.category_ids)):
        in_c = np.array([c in item_categories[i] for i in plays.item[firsts].tolist()], dtype=bool)
        members = firsts[in_c]
        these = rows[row_category == c]
        if not len(these):
            continue
        positives = _windows(plays.user, these, members, plays.item, config.future_window)
        parts.append(
            _build(
                TaskType.CATEGORY,
                log,
                ctx,
                plays.user[these],
                plays.time[these],
                positives,
                split=np.zeros(len(these), dtype=np.int8),
                exclude_seen=True,
                categories=np.full(len(these), c, dtype=np.int64),
            )
        )
    for split_index, starts in ((VALIDATION, ctx.split.validation_start_ms), (TEST, ctx.split.test_start_ms)):
        in_window = np.flatnonzero(plays.first & (split == split_index))
        by_key: dict[tuple[int, int], list[int]] = {}
        for position in in_window.tolist():
            item = int(plays.item[position])
            for c in item_categories[item]:
                by_key.setdefault((int(plays.user[position]), c), []).append(item)
        keys = sorted(by_key)
        users = np.array([u for u, _ in keys], dtype=np.int64)
        parts.append(
            _build(
                TaskType.CATEGORY,
                log,
                ctx,
                users,
                starts[users] if len(users) else users,
                [by_key[k] for k in keys],
                split=np.full(len(keys), split_index, dtype=np.int8),
                exclude_seen=True,
                categories=np.array([c for _, c in keys], dtype=np.int64),
            )
        )
    return Examples.concat(parts)


def new_releases_labels(log: LogData, ctx: LabelContext) -> Examples:
    """User -> the new releases they go on to like; candidates are the items new at the row's time.

    An item is new at a time when its release year lies in the window of
    :data:`~unirank.artifact.catalog.NEW_RELEASE_YEARS` years ending at that time's year
    (:func:`~unirank.artifact.catalog.new_release_years`: the one definition serving uses too).
    From plain engagements: a training row at each liked first engagement of an item new at that
    time, whose positives are the user's next ``future_window`` such engagements of items still new
    at the row's time; one validation and one test row per user, at the window's start, whose
    positives are every liked first engagement inside the window of an item new at that start.
    Already played items are excluded, as for notifications.
    """
    plays, config = ctx.plays, ctx.config
    years = log.items.release_year
    newest = int(years.max()) if len(years) else 0
    liked_first = plays.first & _liked(plays, config)
    split = ctx.split.assign(plays.user, plays.time)
    start, end = plays.before(plays.user, plays.time)
    candidates = np.flatnonzero(
        liked_first & (split == TRAIN) & is_new_release(years[plays.item], plays.time, newest)
    )
    rows = _at_most(candidates[(end - start)[candidates] >= 1], config.max_train_rows_per_task, config.seed)
    windows = _windows(plays.user, rows, candidates, plays.item, config.future_window)
    # A later engagement may be of an item released after the row's year: not a candidate then.
    lengths = np.array([len(w) for w in windows], dtype=np.int64)
    items = np.fromiter((i for w in windows for i in w), dtype=np.int64, count=int(lengths.sum()))
    row_of = np.repeat(np.arange(len(rows)), lengths)
    new = is_new_release(years[items], plays.time[rows][row_of], newest)
    kept = np.bincount(row_of[new], minlength=len(rows))
    positives = [part.tolist() for part in np.split(items[new], np.cumsum(kept)[:-1])] if len(rows) else []
    return _user_rows(
        TaskType.NEW_RELEASES,
        log,
        ctx,
        rows,
        positives,
        lambda starts: liked_first & is_new_release(years[plays.item], starts, newest),
    )


LABEL_FUNCTIONS: Mapping[str, LabelFunction] = MappingProxyType(
    {
        "notification": notification_labels,
        "related_items": related_labels,
        "search": search_labels,
        "category": category_labels,
        "new_releases": new_releases_labels,
    }
)
"""Task name -> its label function; read-only (a new use-case is a code change, not a mutation)."""


def make_examples(
    log: LogData,
    max_history: int,
    split: UserSplit | None = None,
    label_functions: Mapping[str, LabelFunction] = LABEL_FUNCTIONS,
    config: LabelConfig | None = None,
) -> Examples:
    """Every registered task's examples, merged into one time-ordered set."""
    unknown = sorted(set(label_functions) - {spec.name for spec in TASKS})
    if unknown:
        raise ValueError(f"label functions for unknown tasks {unknown}; add them to unirank.artifact.tasks")
    ctx = LabelContext(
        plays=PlayHistory(log),
        split=split or UserSplit.from_logs(log),
        max_history=max_history,
        config=config or LabelConfig(),
    )
    examples = Examples.concat([fn(log, ctx) for fn in label_functions.values()])
    return cap_evaluation_rows(examples, ctx.config.max_evaluation_rows_per_user, ctx.config.seed)


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
