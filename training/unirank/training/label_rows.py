"""What every label function builds with: the label settings and context, one task's examples
from per-row columns (history strictly before each row's time), and the pieces derived labels share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from unirank.artifact import Context, TaskType
from unirank.training.examples import TEST, VALIDATION, Examples, PlayHistory, UserSplit, csr_from_lists
from unirank.training.logs import LogData


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


@dataclass
class LabelContext:
    """What every label function reads besides the logs."""

    plays: PlayHistory
    split: UserSplit
    max_history: int
    config: LabelConfig = field(default_factory=LabelConfig)


LabelFunction = Callable[[LogData, LabelContext], Examples]
"""(logs, label context) -> the examples of one task."""


def task_examples(
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
        positive_indptr, positive_items = csr_from_lists(positives)  # type: ignore[arg-type]
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


def at_most(positions: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of the sorted ``positions`` (a seeded subset, still sorted)."""
    if limit <= 0 or len(positions) <= limit:
        return positions
    return np.sort(np.random.default_rng(seed + 3).choice(positions, size=limit, replace=False))


def liked_mask(plays: PlayHistory, config: LabelConfig) -> np.ndarray:
    """bool per sorted play: rated at least ``positive_rating``, or unrated with weight > 0."""
    rated = np.isfinite(plays.rating)
    return np.where(rated, plays.rating >= config.positive_rating, plays.weight > 0)


def next_windows(
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


def user_rows(
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
        task_examples(
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
            task_examples(
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
