"""The one training dataset: examples encoded by the serving encoder, split per user, sampled by task."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from unirank.artifact import TASKS, Catalog, FeatureEncoder, ModelInputs
from unirank.artifact.activity import ActivityHistory, release_times_ms
from unirank.artifact.text import tokenize
from unirank.training.examples import (
    SPLITS,
    TRAIN,
    Examples,
    PlayHistory,
    UserSplit,
    events_split,
    take_csr,
)
from unirank.training.logs import NONE, EventTable, EventType, ItemTable, LogData, TextTable

__all__ = [
    "SPLITS",
    "Dataset",
    "LogMapping",
    "StratifiedTaskSampler",
    "UserSplit",
    "catalog_from_logs",
    "encode_examples",
    "item_events",
    "map_onto_catalog",
]


def catalog_from_logs(log: LogData, split: UserSplit) -> Catalog:
    """The artifact catalogue; popularity and query words come from the training split only."""
    events = log.events
    train = events_split(log, split) == TRAIN
    popularity = np.bincount(events.item[train], minlength=log.n_items).astype(np.float64)
    query_tokens: dict[str, None] = {}
    for i in np.flatnonzero(train & (events.event_type == EventType.SEARCH_CLICK)).tolist():
        query_tokens.update(dict.fromkeys(tokenize(events.query[i])))
    texts = log.texts
    for i in np.flatnonzero(split.assign(texts.user, texts.timestamp_ms) == TRAIN).tolist():
        query_tokens.update(dict.fromkeys(tokenize(texts.text[i])))
    return Catalog.build(
        item_ids=log.items.item_ids,
        titles=log.items.titles,
        item_categories=log.items.categories,
        maturity=log.items.maturity.tolist(),
        release_year=log.items.release_year.tolist(),
        popularity=popularity.tolist(),
        user_ids=log.user_ids,
        # Query-only words ("scary", tags) need embeddings too, or the encoder would drop them.
        extra_tokens=query_tokens,
    )


@dataclass
class LogMapping:
    """How the new logs map onto the parent's catalogue (printed, and stored in the manifest)."""

    interactions: int = 0
    kept: int = 0
    unknown_item: int = 0
    """Interactions with an item the parent's catalogue lacks: dropped."""
    unknown_anchor: int = 0
    """Related clicks on the page of an item the parent lacks: dropped."""
    unknown_category: int = 0
    """Category clicks in a category the parent lacks: dropped."""
    texts_dropped: int = 0
    """User texts about items the parent lacks: dropped."""
    new_items: int = 0
    """Items of the new logs the parent lacks (served only after a full training)."""
    users: int = 0
    unknown_users: int = 0
    """Users the parent's vocabulary lacks: kept, ranked from their history (user id input 0)."""
    unknown_user_interactions: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        dropped = self.interactions - self.kept
        return (
            f"mapped onto the parent's catalogue: {self.kept}/{self.interactions} interactions kept, "
            f"{dropped} dropped ({self.unknown_item} unknown item, {self.unknown_anchor} unknown "
            f"anchor, {self.unknown_category} unknown category), {self.texts_dropped} texts dropped; "
            f"{self.new_items} items new to the parent (not servable before a full training); "
            f"{self.unknown_users}/{self.users} users new to the parent, kept "
            f"({self.unknown_user_interactions} interactions; ranked from their history)"
        )


def _lookup(mapping: np.ndarray, values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``mapping[values]`` where ``where`` holds, NONE elsewhere (values there may be NONE)."""
    out = np.full(len(values), NONE, dtype=np.int64)
    out[where] = mapping[values[where]]
    return out


def map_onto_catalog(log: LogData, catalog: Catalog) -> tuple[LogData, LogMapping]:
    """``log`` re-expressed in ``catalog``'s items and categories (same order), with the counts.

    Users keep their ids (the encoder looks them up by name); users left without any event or text
    are dropped from the user table.
    """
    item_map = catalog.items.indices(log.items.item_ids) - 1  # -1: unknown to the catalogue
    category_map = catalog.categories.indices(log.category_ids) - 1
    events = log.events
    item = item_map[events.item]
    related = events.event_type == EventType.RELATED_CLICK
    in_category = events.event_type == EventType.CATEGORY_CLICK
    anchor = _lookup(item_map, events.anchor_item, related)
    category = _lookup(category_map, events.category, in_category)
    known_item = item >= 0
    bad_anchor = known_item & related & (anchor < 0)
    bad_category = known_item & in_category & (category < 0)
    keep = known_item & ~bad_anchor & ~bad_category
    texts = log.texts
    keep_text = item_map[texts.item] >= 0 if len(texts) else np.zeros(0, dtype=bool)

    used, inverse = np.unique(np.concatenate([events.user[keep], texts.user[keep_text]]), return_inverse=True)
    user_ids = [log.user_ids[u] for u in used.tolist()]
    n_kept = int(keep.sum())
    kept_events = EventTable(
        user=inverse[:n_kept].astype(np.int64),
        item=item[keep],
        timestamp_ms=events.timestamp_ms[keep],
        event_type=events.event_type[keep],
        anchor_item=anchor[keep],
        category=category[keep],
        query=[events.query[i] for i in np.flatnonzero(keep).tolist()],
        rating=events.rating[keep],
        weight=events.weight[keep],
    )
    kept_texts = TextTable(
        user=inverse[n_kept:].astype(np.int64),
        item=item_map[texts.item[keep_text]] if len(texts) else np.zeros(0, dtype=np.int64),
        text=[texts.text[i] for i in np.flatnonzero(keep_text).tolist()],
        timestamp_ms=texts.timestamp_ms[keep_text],
    )
    items = ItemTable(
        item_ids=list(catalog.items.keys[1:]),
        titles=list(catalog.titles[1:]),
        categories=[list(c) for c in catalog.item_categories[1:]],
        maturity=np.asarray(catalog.maturity[1:], dtype=np.int64),
        release_year=np.asarray(catalog.release_year[1:], dtype=np.int64),
    )
    mapped = LogData(
        items=items,
        user_ids=user_ids,
        category_ids=list(catalog.categories.keys[1:]),
        events=kept_events,
        source=log.source,
        provenance=dict(log.provenance),
        texts=kept_texts,
    )
    mapped.validate()
    new_user = ~catalog.users.indices(user_ids).astype(bool)
    report = LogMapping(
        interactions=len(events),
        kept=n_kept,
        unknown_item=int((~known_item).sum()),
        unknown_anchor=int(bad_anchor.sum()),
        unknown_category=int(bad_category.sum()),
        texts_dropped=int(len(texts) - keep_text.sum()),
        new_items=int((item_map < 0).sum()),
        users=len(user_ids),
        unknown_users=int(new_user.sum()),
        unknown_user_interactions=int(new_user[kept_events.user].sum()),
    )
    return mapped, report


class ItemEvents:
    """Every event of the logs as (catalogue item, time), whichever split: the time features of a
    row read the ones strictly before its time (:class:`ActivityHistory`, one per half-life)."""

    def __init__(self, n_items: int, items: np.ndarray, times_ms: np.ndarray, release_ms: np.ndarray) -> None:
        self.n_items, self.items, self.times_ms, self.release_ms = n_items, items, times_ms, release_ms
        self._by_half_life: dict[float, ActivityHistory] = {}

    def history(self, half_life_days: float) -> ActivityHistory:
        if half_life_days not in self._by_half_life:
            self._by_half_life[half_life_days] = ActivityHistory(
                self.n_items, self.items, self.times_ms, self.release_ms, half_life_days
            )
        return self._by_half_life[half_life_days]


@dataclass
class Dataset:
    """Encoded examples plus what evaluation needs beside the model inputs.

    Item references are catalogue indices (0 = padding). ``inputs.candidates`` is the [n, 1]
    column of each row's first positive; every positive is in the ``positive_*`` CSR lists.
    """

    inputs: ModelInputs
    timestamp_ms: np.ndarray
    split: np.ndarray
    """int8 index into :data:`SPLITS`."""
    positive_indptr: np.ndarray
    positive_items: np.ndarray
    excluded_indptr: np.ndarray
    """CSR over rows -> ``excluded_items``: items the use-case never recommends (the anchor)."""
    excluded_items: np.ndarray
    exclude_seen: np.ndarray
    """bool per row: everything the user played before the row's time is excluded too."""
    history_start: np.ndarray
    history_end: np.ndarray
    """[start, end) into ``play_items``: every play of the user strictly before the row's time."""
    play_items: np.ndarray
    """Catalogue indices of all plays, by user then time (shared by every row)."""
    user: np.ndarray
    """int64 row into the logs' user table (unlike ``inputs.user``, never hidden)."""
    events: ItemEvents | None = None
    """Every event of the logs, for the time features (None: a dataset without them)."""

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def task(self) -> np.ndarray:
        return self.inputs.task

    @property
    def positive(self) -> np.ndarray:
        """The first positive of each row."""
        return self.inputs.candidates[:, 0]

    def positives(self, row: int) -> np.ndarray:
        return self.positive_items[self.positive_indptr[row] : self.positive_indptr[row + 1]]

    def history(self, row: int) -> np.ndarray:
        """Every item the user played before the row's time, oldest first (not capped like the input)."""
        return self.play_items[self.history_start[row] : self.history_end[row]]

    def excluded(self, row: int) -> np.ndarray:
        extra = self.excluded_items[self.excluded_indptr[row] : self.excluded_indptr[row + 1]]
        if not self.exclude_seen[row]:
            return extra
        return np.concatenate([extra, self.history(row)])

    def rows(self, split: str, task: int | None = None) -> np.ndarray:
        """Row indices of one split, optionally of one task id."""
        mask = self.split == SPLITS.index(split)
        if task is not None:
            mask &= self.task == task
        return np.flatnonzero(mask)

    def subset(self, rows: np.ndarray) -> Dataset:
        positive_indptr, positive_items = take_csr(self.positive_indptr, self.positive_items, rows)
        excluded_indptr, excluded_items = take_csr(self.excluded_indptr, self.excluded_items, rows)
        return Dataset(
            inputs=ModelInputs(**{name: value[rows] for name, value in self.inputs.as_dict().items()}),
            timestamp_ms=self.timestamp_ms[rows],
            split=self.split[rows],
            positive_indptr=positive_indptr,
            positive_items=positive_items,
            excluded_indptr=excluded_indptr,
            excluded_items=excluded_items,
            exclude_seen=self.exclude_seen[rows],
            history_start=self.history_start[rows],
            history_end=self.history_end[rows],
            play_items=self.play_items,
            user=self.user[rows],
            events=self.events,
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per task and split, for logs and the manifest."""
        return {
            spec.name: {split: len(self.rows(split, int(spec.task_type))) for split in SPLITS}
            for spec in TASKS
        }


def encode_examples(examples: Examples, encoder: FeatureEncoder, log: LogData) -> Dataset:
    """Encode every context with the serving encoder; drop examples with no positive in the catalogue."""
    catalog = encoder.catalog
    to_index = np.array([catalog.items.index(x) for x in log.items.item_ids], dtype=np.int64)
    n = len(examples)
    row_of = np.repeat(np.arange(n), np.diff(examples.positive_indptr))
    known = to_index[examples.positive_items] > 0
    keep = np.flatnonzero(np.bincount(row_of[known], minlength=n) > 0)
    kept = examples.take(keep)
    positive_items = to_index[kept.positive_items]
    row_of = np.repeat(np.arange(len(kept)), np.diff(kept.positive_indptr))
    positive_items, row_of = positive_items[positive_items > 0], row_of[positive_items > 0]
    positive_indptr = np.searchsorted(row_of, np.arange(len(kept) + 1), side="left").astype(np.int64)
    excluded = to_index[kept.excluded_items]
    row_ex = np.repeat(np.arange(len(kept)), np.diff(kept.excluded_indptr))
    excluded, row_ex = excluded[excluded > 0], row_ex[excluded > 0]
    excluded_indptr = np.searchsorted(row_ex, np.arange(len(kept) + 1), side="left").astype(np.int64)
    encoded = [encoder.encode(context) for context in kept.contexts]
    inputs = encoder.batch(encoded, positive_items[positive_indptr[:-1]][:, None])
    plays = PlayHistory(log)
    history_start, history_end = plays.before(kept.user, kept.timestamp_ms)
    return Dataset(
        inputs=inputs,
        timestamp_ms=kept.timestamp_ms,
        split=kept.split,
        positive_indptr=positive_indptr,
        positive_items=positive_items.astype(np.int64),
        excluded_indptr=excluded_indptr,
        excluded_items=excluded.astype(np.int64),
        exclude_seen=kept.exclude_seen,
        history_start=history_start,
        history_end=history_end,
        play_items=to_index[plays.item],
        user=kept.user,
        events=item_events(log, catalog),
    )


def item_events(log: LogData, catalog: Catalog) -> ItemEvents:
    """Every event of ``log`` (any split) in ``catalog``'s item indices, with the release times."""
    to_index = catalog.items.indices(log.items.item_ids)
    return ItemEvents(
        len(catalog.items),
        to_index[log.events.item],
        log.events.timestamp_ms,
        release_times_ms(np.asarray(catalog.release_year)),
    )


class StratifiedTaskSampler:
    """Batches whose task mix follows fixed ratios, whatever each task's share of the data.

    Each batch holds ``round(ratio_t * batch_size)`` rows of task t (largest remainder, so sizes
    add up); each task cycles through its own reshuffled rows, so a small task is revisited more
    often instead of being drowned by a large one. An epoch is ``ceil(n_rows / batch_size)`` steps.
    """

    def __init__(
        self,
        task: np.ndarray,
        batch_size: int,
        ratios: Mapping[int, float] | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        present = sorted(int(t) for t in np.unique(task))
        if ratios is None:  # proportional to the data
            ratios = {t: float((task == t).sum()) for t in present}
        unknown = sorted(set(ratios) - set(present))
        if any(ratios[t] > 0 for t in unknown):
            raise ValueError(f"ratios given for tasks {unknown} that have no rows")
        if any(r < 0 for r in ratios.values()):
            raise ValueError("task ratios must be >= 0")
        weights = {t: float(ratios.get(t, 0.0)) for t in present}
        total = sum(weights.values())
        if total <= 0:
            raise ValueError("at least one task with rows needs a positive ratio")
        self.batch_size = batch_size
        self.ratios = weights
        """The share of each task with rows, as given (not normalised); 0 for tasks not drawn."""
        self.quota = self._quota({t: w / total for t, w in weights.items() if w > 0}, batch_size)
        self.steps_per_epoch = max(1, math.ceil(len(task) / batch_size))
        self._rows = {t: np.flatnonzero(task == t) for t in self.quota}
        self._order = {t: np.zeros(0, dtype=np.int64) for t in self.quota}
        self._cursor = dict.fromkeys(self.quota, 0)
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def _quota(shares: dict[int, float], batch_size: int) -> dict[int, int]:
        raw = {t: s * batch_size for t, s in shares.items()}
        quota = {t: math.floor(v) for t, v in raw.items()}
        by_remainder = sorted(raw, key=lambda t: (-(raw[t] - quota[t]), t))
        for t in by_remainder[: batch_size - sum(quota.values())]:
            quota[t] += 1
        return quota

    def _take(self, task: int, n: int) -> np.ndarray:
        out: list[np.ndarray] = []
        while n > 0:
            if self._cursor[task] >= len(self._order[task]):
                self._order[task] = self._rng.permutation(self._rows[task])
                self._cursor[task] = 0
            start = self._cursor[task]
            chunk = self._order[task][start : start + n]
            self._cursor[task] += len(chunk)
            n -= len(chunk)
            out.append(chunk)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def epoch(self) -> Iterator[np.ndarray]:
        """``steps_per_epoch`` batches of row indices."""
        for _ in range(self.steps_per_epoch):
            yield np.concatenate([self._take(t, q) for t, q in self.quota.items() if q > 0])
