"""The one training dataset: examples encoded by the serving encoder, split by time, sampled by task."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from unirank.artifact import TASKS, Catalog, FeatureEncoder, ModelInputs
from unirank.artifact.text import tokenize
from unirank.training.labels import Examples
from unirank.training.logs import EventType, LogData

SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitTimes:
    """Events before ``train_end_ms`` train, then validation until ``validation_end_ms``, then test."""

    train_end_ms: int
    validation_end_ms: int

    def assign(self, timestamp_ms: np.ndarray) -> np.ndarray:
        """int8 index into :data:`SPLITS` per timestamp."""
        edges = np.array([self.train_end_ms, self.validation_end_ms], dtype=np.int64)
        return np.searchsorted(edges, timestamp_ms, side="right").astype(np.int8)


def temporal_split(
    timestamp_ms: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> SplitTimes:
    """Cut points at the given quantiles of the label events' times (not at random rows).

    Splitting by time rather than by row is what serving faces: the model only ever knows the past.
    """
    if len(fractions) != 3 or min(fractions) <= 0:
        raise ValueError(f"need three positive split fractions, got {fractions}")
    if not len(timestamp_ms):
        raise ValueError("cannot split an empty set of label events")
    total = sum(fractions)
    cuts = np.quantile(timestamp_ms, [fractions[0] / total, (fractions[0] + fractions[1]) / total])
    train_end, validation_end = (math.ceil(float(c)) for c in cuts)
    return SplitTimes(train_end_ms=train_end, validation_end_ms=max(validation_end, train_end + 1))


def label_event_times(log: LogData) -> np.ndarray:
    """Times of every non-play event: the ones that become labels."""
    return log.events.timestamp_ms[log.events.event_type != EventType.PLAY]


def catalog_from_logs(log: LogData, train_end_ms: int) -> Catalog:
    """The artifact catalogue; popularity and query tokens come from the training window only."""
    events = log.events
    past = events.timestamp_ms < train_end_ms
    popularity = np.bincount(events.item[past], minlength=log.n_items).astype(np.float64)
    is_search = past & (events.event_type == EventType.SEARCH_CLICK)
    query_tokens: dict[str, None] = {}
    for i in np.flatnonzero(is_search).tolist():
        query_tokens.update(dict.fromkeys(tokenize(events.query[i])))
    return Catalog.build(
        item_ids=log.items.item_ids,
        titles=log.items.titles,
        item_categories=log.items.categories,
        maturity=log.items.maturity.tolist(),
        release_year=log.items.release_year.tolist(),
        popularity=popularity.tolist(),
        user_ids=log.user_ids,
        # Query-only words ("scary") need embeddings too, or the encoder would drop them.
        extra_tokens=query_tokens,
    )


@dataclass
class Dataset:
    """Encoded examples; ``inputs.candidates`` is the [n, 1] column of positive item indices."""

    inputs: ModelInputs
    timestamp_ms: np.ndarray
    split: np.ndarray
    """int8 index into :data:`SPLITS`."""
    excluded_indptr: np.ndarray
    """CSR over rows -> ``excluded_items`` (item indices the use-case never recommends)."""
    excluded_items: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def task(self) -> np.ndarray:
        return self.inputs.task

    @property
    def positive(self) -> np.ndarray:
        return self.inputs.candidates[:, 0]

    def rows(self, split: str, task: int | None = None) -> np.ndarray:
        """Row indices of one split, optionally of one task id."""
        mask = self.split == SPLITS.index(split)
        if task is not None:
            mask &= self.task == task
        return np.flatnonzero(mask)

    def excluded(self, row: int) -> np.ndarray:
        return self.excluded_items[self.excluded_indptr[row] : self.excluded_indptr[row + 1]]

    def subset(self, rows: np.ndarray) -> Dataset:
        lengths = np.diff(self.excluded_indptr)[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (
            np.concatenate([self.excluded(int(r)) for r in rows]) if len(rows) else self.excluded_items[:0]
        )
        return Dataset(
            inputs=ModelInputs(**{name: value[rows] for name, value in self.inputs.as_dict().items()}),
            timestamp_ms=self.timestamp_ms[rows],
            split=self.split[rows],
            excluded_indptr=indptr,
            excluded_items=items.astype(np.int64),
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per task and split, for logs and the manifest."""
        return {
            spec.name: {split: len(self.rows(split, int(spec.task_type))) for split in SPLITS}
            for spec in TASKS
        }


def encode_examples(examples: Examples, encoder: FeatureEncoder, split_times: SplitTimes) -> Dataset:
    """Encode every context with the serving encoder; drop examples whose positive is unknown."""
    catalog = encoder.catalog
    encoded = [encoder.encode(context) for context in examples.contexts]
    positive = np.fromiter(
        (catalog.items.index(x) for x in examples.positive_item_ids), dtype=np.int64, count=len(examples)
    )
    excluded_lists = [
        [i for i in (catalog.items.index(x) for x in ids) if i] for ids in examples.excluded_item_ids
    ]
    keep = np.flatnonzero(positive > 0)
    inputs = encoder.batch([encoded[i] for i in keep.tolist()], positive[keep, None])
    lengths = np.array([len(excluded_lists[i]) for i in keep.tolist()], dtype=np.int64)
    indptr = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    flat = [x for i in keep.tolist() for x in excluded_lists[i]]
    times = examples.timestamp_ms[keep]
    return Dataset(
        inputs=inputs,
        timestamp_ms=times,
        split=split_times.assign(times),
        excluded_indptr=indptr,
        excluded_items=np.asarray(flat, dtype=np.int64),
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
