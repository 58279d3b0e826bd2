"""Re-scoring two model versions on one validation log, for the offline gate (``[gate]
validation_logs``): the gate then compares values measured on the same data, not each artifact's
metrics from its own split (issue 16).

The log is a directory in the UniRank log format (docs/data.md, read with
:mod:`unirank.artifact.logformat`). Replayed in time order, each event is one evaluation row of the
use-case whose surface it records, with the user's earlier plays in the log as history:

* ``notification_open``: a notification row; ``related_click``: a related-items row (its anchor);
  ``search_click``: a search row (its query); ``category_click``: a category row (its category);
* ``play`` of an item that is a new release at the time (the log's ``release_year``): a
  new-releases row.

A row ranks its use-case's candidate set as offline evaluation does (category rows their
category's items, new-release rows the items new at the row's time, others the catalogue), without
the anchor and, for notification, category and new-release rows, without what the user already
played (those rows' positive must be a first play). Where the set is larger than ``max_candidates``
the positive and a seeded draw from the rest are ranked, the same draw for both versions. At most
``max_rows`` rows per use-case, evenly spaced over the log, keep a reload short. The metric is
computed with :mod:`unirank.artifact.metrics`, the definition training reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unirank.artifact import Catalog, Context, TaskType, metrics
from unirank.artifact.catalog import is_new_release
from unirank.artifact.logformat import (
    EVENT_TYPE_NAMES,
    EventType,
    LogFormatError,
    cell_text,
    manifest_problem,
    parse_timestamp_ms,
    read_table,
    table_file,
)
from unirank.artifact.tasks import TASKS, task_by_name
from unirank.server.config import RESCORABLE_METRIC

if TYPE_CHECKING:
    from unirank.server.runtime import ModelRuntime

CHUNK_ROWS = 16
"""Rows per scoring call."""
MISSED = 2**40
"""The rank of a positive that is not among a row's candidates: past any cut-off."""
HISTORY = 50
"""Earlier plays kept per user (the encoder keeps the most recent ``max_history`` of them)."""
_CLICK_TASKS = {
    EventType.NOTIFICATION_OPEN: TaskType.NOTIFICATION,
    EventType.RELATED_CLICK: TaskType.RELATED_ITEMS,
    EventType.SEARCH_CLICK: TaskType.SEARCH,
    EventType.CATEGORY_CLICK: TaskType.CATEGORY,
}
_NAMES = {spec.task_type: spec.name for spec in TASKS}
_FRESH_ONLY = frozenset({TaskType.NOTIFICATION, TaskType.CATEGORY, TaskType.NEW_RELEASES})
"""Use-cases that never recommend what the user already played (offline evaluation's exclusions)."""


class ValidationLogError(Exception):
    """The validation log cannot be read; the message says why (the version is refused)."""


def metric_value(metric: str, ranks: np.ndarray) -> float:
    """``metric`` over rows with one positive each, from the positives' 0-based ranks."""
    match = RESCORABLE_METRIC.match(metric)
    if match is None:
        raise ValueError(f"cannot compute {metric!r} (ndcg@K, recall@K, mrr)")
    if match.group(1) is None:
        return metrics.mrr(ranks)
    k = int(match.group(2))
    return metrics.ndcg_at_k(ranks, k) if match.group(1) == "ndcg" else metrics.recall_at_k(ranks, k)


@dataclass(frozen=True)
class ValidationRow:
    """One evaluation row: a request context, the item the user then engaged with, and when."""

    context: Context
    item_id: str
    time_ms: int


def read_rows(path: str | Path, max_rows: int) -> dict[str, list[ValidationRow]]:
    """The validation rows of every use-case in the log at ``path``, at most ``max_rows`` each
    (ValidationLogError when the log cannot be read)."""
    directory = Path(path)
    try:
        if not directory.is_dir():
            raise ValidationLogError(f"validation log {directory} is not a directory")
        problem = manifest_problem(directory)
        if problem is not None:
            raise ValidationLogError(f"validation log {directory}: {problem}")
        release_year = _release_years(directory)
        events = sorted(_events(directory), key=lambda event: event[2])  # stable: log order on ties
    except (OSError, UnicodeDecodeError, ValueError, LogFormatError) as exc:
        raise ValidationLogError(f"validation log {directory}: {exc}") from exc
    rows: dict[str, list[ValidationRow]] = {spec.name: [] for spec in TASKS}
    newest = max(release_year.values(), default=0)
    played: dict[str, list[str]] = {}
    for user_id, item_id, time_ms, kind, detail in events:
        history = played.setdefault(user_id, [])
        seen = tuple(history)
        task: TaskType | None = _CLICK_TASKS.get(kind)
        if kind == EventType.PLAY:
            year = release_year.get(item_id, 0)
            if year and bool(is_new_release(np.array([year]), time_ms, newest)[0]):
                task = TaskType.NEW_RELEASES
            history.append(item_id)
            del history[:-HISTORY]
        if task is None or (task in _FRESH_ONLY and item_id in seen):
            continue
        context = Context(
            task=task,
            user_id=user_id,
            history_item_ids=seen,
            query=detail if task == TaskType.SEARCH else "",
            anchor_item_id=detail if task == TaskType.RELATED_ITEMS else "",
            category_id=detail if task == TaskType.CATEGORY else "",
        )
        rows[_NAMES[task]].append(ValidationRow(context, item_id, time_ms))
    return {task: _evenly(found, max_rows) for task, found in rows.items()}


def _evenly(rows: list[ValidationRow], limit: int) -> list[ValidationRow]:
    if len(rows) <= limit:
        return rows
    picked = np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(np.int64))
    return [rows[i] for i in picked.tolist()]


def _table(directory: Path, table: str) -> Iterable[dict[str, Any]]:
    file = table_file(directory, table)
    if file is None:
        raise ValidationLogError(f"missing {table}.csv or {table}.parquet")
    header, rows = read_table(file)
    for row in rows:
        if len(row) == len(header):
            yield dict(zip(header, row, strict=True))


def _release_years(directory: Path) -> dict[str, int]:
    years = {}
    for row in _table(directory, "items"):
        text = cell_text(row.get("release_year"))
        if text:
            try:
                years[cell_text(row.get("item_id"))] = int(float(text))
            except ValueError:
                continue  # the training reader reports it; here the item just has no year
    return years


def _events(directory: Path) -> Iterable[tuple[str, str, int, EventType, str]]:
    """(user, item, time, type, context: the anchor, query or category) of each usable event."""
    detail_column = {
        EventType.RELATED_CLICK: "anchor_item_id",
        EventType.SEARCH_CLICK: "query",
        EventType.CATEGORY_CLICK: "category",
    }
    for row in _table(directory, "interactions"):
        user_id, item_id = cell_text(row.get("user_id")), cell_text(row.get("item_id"))
        time_ms = parse_timestamp_ms(row.get("timestamp"))
        kind = EVENT_TYPE_NAMES.get(cell_text(row.get("event_type")) or "play")
        if not user_id or not item_id or time_ms is None or kind is None:
            continue  # malformed rows are skipped; the training reader reports them
        column = detail_column.get(kind)
        detail = cell_text(row.get(column)) if column else ""
        if column and not detail:
            continue
        yield user_id, item_id, time_ms, kind, detail


class _Candidates:
    """Each row's candidate set in one version's catalogue, and the positive's place in it."""

    def __init__(self, catalog: Catalog, max_candidates: int) -> None:
        self.catalog = catalog
        self.max_candidates = max_candidates
        self.categories = catalog.category_matrix()
        self.release_year = np.asarray(catalog.release_year, dtype=np.int64)
        self.newest = catalog.newest_release_year

    def of(self, row: ValidationRow, number: int) -> tuple[np.ndarray, int]:
        """(candidate item indices, the positive's column; -1 when it is not among them)."""
        catalog, context = self.catalog, row.context
        items = np.arange(1, catalog.n_items + 1, dtype=np.int64)
        keep = np.ones(catalog.n_items, dtype=bool)
        if context.task == TaskType.CATEGORY:
            category = catalog.categories.index_ignoring_case(context.category_id)
            keep &= (self.categories[1:] == category).any(axis=1) if category else False
        elif context.task == TaskType.NEW_RELEASES:
            keep &= is_new_release(self.release_year[1:], row.time_ms, self.newest)
        excluded = [context.anchor_item_id] if context.anchor_item_id else []
        if context.task in _FRESH_ONLY:
            excluded += list(context.history_item_ids)
        for index in catalog.items.known_indices(excluded):
            keep[index - 1] = False
        candidates = items[keep]
        positive = catalog.items.index(row.item_id)
        if not positive or not keep[positive - 1]:
            return candidates[: self.max_candidates], -1
        if len(candidates) > self.max_candidates:
            others = candidates[candidates != positive]
            drawn = np.random.default_rng(number).choice(others, self.max_candidates - 1, replace=False)
            candidates = np.sort(np.append(drawn, positive))
        return candidates, int(np.searchsorted(candidates, positive))


async def rescore(
    runtime: ModelRuntime, rows: list[ValidationRow], metric: str, max_candidates: int
) -> float:
    """``metric`` of ``runtime`` on ``rows`` (0 without rows). Rows are prepared on a worker thread
    and scored by the version's backend, a chunk at a time, so the event loop keeps serving."""
    candidates = _Candidates(runtime.artifact.catalog, max_candidates)
    ranks: list[np.ndarray] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        inputs, positives, width = await asyncio.to_thread(_prepare, runtime, candidates, chunk, start)
        scores = await runtime.backend.score(inputs)
        ranks.append(_ranks(scores, positives, width))
    return metric_value(metric, np.concatenate(ranks)) if ranks else 0.0


def _prepare(
    runtime: ModelRuntime, candidates: _Candidates, chunk: list[ValidationRow], start: int
) -> tuple[Any, np.ndarray, np.ndarray]:
    sets = [candidates.of(row, start + i) for i, row in enumerate(chunk)]
    width = np.array([len(items) for items, _ in sets], dtype=np.int64)
    matrix = np.zeros((len(chunk), max(1, int(width.max()))), dtype=np.int64)
    for i, (items, _) in enumerate(sets):
        matrix[i, : len(items)] = items
    encoded = [runtime.encoder.encode(row.context) for row in chunk]
    at_ms = np.array([row.time_ms for row in chunk], dtype=np.float64)  # each row at its own time
    inputs = runtime.encoder.batch(encoded, matrix, at_ms)
    return inputs, np.array([column for _, column in sets], dtype=np.int64), width


def _ranks(scores: np.ndarray, positives: np.ndarray, width: np.ndarray) -> np.ndarray:
    """0-based rank of each row's positive among its own candidates (padding scored -inf); a
    positive that is not a candidate (unknown to the version, or outside the set) is ``MISSED``."""
    scores = np.array(scores, dtype=np.float64)
    scores[np.arange(scores.shape[1])[None, :] >= width[:, None]] = -np.inf
    ranks = metrics.positive_ranks(scores, np.maximum(positives, 0))
    return np.where(positives < 0, MISSED, ranks)


Rescored = tuple[float | None, float | None, int]
"""(serving value, candidate value, rows); a value is None where that version has no head for the task."""


async def rescore_tasks(
    rows: Mapping[str, list[ValidationRow]],
    serving: Mapping[str, ModelRuntime],
    candidate: ModelRuntime,
    metrics_by_task: Mapping[str, str],
    max_candidates: int,
) -> dict[str, Rescored]:
    """Per task: both versions' values on the same rows, and how many rows."""
    out: dict[str, Rescored] = {}
    for task, metric in metrics_by_task.items():
        found, spec = rows.get(task, []), task_by_name(task)
        values = [
            await rescore(runtime, found, metric, max_candidates) if runtime.has_head(spec) else None
            for runtime in (serving[task], candidate)
        ]
        out[task] = (values[0], values[1], len(found))
    return out
