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

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from unirank.artifact import TASKS, TaskType
from unirank.artifact.catalog import is_new_release
from unirank.artifact.text import tokenize
from unirank.training.examples import (
    TEST,
    TRAIN,
    VALIDATION,
    Examples,
    PlayHistory,
    UserSplit,
    cap_evaluation_rows,
)
from unirank.training.label_rows import (
    LabelConfig,
    LabelContext,
    LabelFunction,
    at_most,
    liked_mask,
    next_windows,
    task_examples,
    user_rows,
)
from unirank.training.logs import EventType, LogData

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


def notification_labels(log: LogData, ctx: LabelContext) -> Examples:
    """User -> the items they engage with next.

    With logged notification opens: the opened item, everything already played excluded. From
    plain engagements: a training row at each first engagement whose positives are the next
    ``future_window`` first engagements; one validation and one test row per user whose history is
    everything before the window and whose positives are every first engagement inside it.
    """
    events = log.events_of(EventType.NOTIFICATION_OPEN)
    if len(events):
        return task_examples(
            TaskType.NOTIFICATION, log, ctx, events.user, events.timestamp_ms, events.item, exclude_seen=True
        )
    plays, config = ctx.plays, ctx.config
    split = ctx.split.assign(plays.user, plays.time)
    start, end = plays.before(plays.user, plays.time)
    firsts = np.flatnonzero(plays.first & (split == TRAIN))
    rows = at_most(firsts[(end - start)[firsts] >= 1], config.max_train_rows_per_task, config.seed)
    positives = next_windows(plays.user, rows, firsts, plays.item, config.future_window)
    return user_rows(TaskType.NOTIFICATION, log, ctx, rows, positives, lambda _starts: plays.first)


def related_labels(log: LogData, ctx: LabelContext) -> Examples:
    """Anchor item -> the related item engaged next; the anchor itself is excluded.

    With logged related clicks: the clicked item on the anchor's page. From plain engagements: a
    liked item -> the same user's next liked first engagement within ``related_max_gap_s``
    (already played items excluded as well, since a first engagement is never one of them).
    """
    events = log.events_of(EventType.RELATED_CLICK)
    if len(events):
        return task_examples(
            TaskType.RELATED_ITEMS,
            log,
            ctx,
            events.user,
            events.timestamp_ms,
            events.item,
            anchors=events.anchor_item,
        )
    plays, config = ctx.plays, ctx.config
    liked = np.flatnonzero(liked_mask(plays, config))
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
        np.flatnonzero(~train), at_most(np.flatnonzero(train), config.max_train_rows_per_task, config.seed)
    )
    prev, nxt = prev[keep], nxt[keep]
    return task_examples(
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
        return task_examples(
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
            task_examples(
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
    candidates = np.flatnonzero(plays.first & liked_mask(plays, config))
    chosen = candidates[rng.random(len(candidates)) < config.search_title_share]
    in_train = ctx.split.assign(plays.user[chosen], plays.time[chosen]) == TRAIN
    chosen = chosen[
        np.union1d(
            np.flatnonzero(~in_train),
            at_most(np.flatnonzero(in_train), config.max_train_rows_per_task, config.seed),
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
        task_examples(
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
        return task_examples(
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
    rows = at_most(rows, config.max_train_rows_per_task, config.seed)
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
        positives = next_windows(plays.user, these, members, plays.item, config.future_window)
        parts.append(
            task_examples(
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
            task_examples(
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
    liked_first = plays.first & liked_mask(plays, config)
    split = ctx.split.assign(plays.user, plays.time)
    start, end = plays.before(plays.user, plays.time)
    candidates = np.flatnonzero(
        liked_first & (split == TRAIN) & is_new_release(years[plays.item], plays.time, newest)
    )
    rows = at_most(candidates[(end - start)[candidates] >= 1], config.max_train_rows_per_task, config.seed)
    windows = next_windows(plays.user, rows, candidates, plays.item, config.future_window)
    # A later engagement may be of an item released after the row's year: not a candidate then.
    lengths = np.array([len(w) for w in windows], dtype=np.int64)
    items = np.fromiter((i for w in windows for i in w), dtype=np.int64, count=int(lengths.sum()))
    row_of = np.repeat(np.arange(len(rows)), lengths)
    new = is_new_release(years[items], plays.time[rows][row_of], newest)
    kept = np.bincount(row_of[new], minlength=len(rows))
    positives = [part.tolist() for part in np.split(items[new], np.cumsum(kept)[:-1])] if len(rows) else []
    return user_rows(
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
