"""The canonical log format every data source produces: items, events and optional user texts.

Every source (the synthetic generator, the MovieLens loaders, bring-your-own logs in the UniRank
log format of :mod:`unirank.artifact.logformat`) turns its raw data into a :class:`LogData`;
labels, splits, popularity and retrieval are computed from it alone, so a new source needs no
change downstream.

Conventions:

* Items, users and categories are referred to by row position (0-based) into
  ``LogData.items``, ``LogData.user_ids`` and ``LogData.category_ids``; the external string ids
  live only in those tables. (The artifact's vocabularies reserve index 0 for padding; these
  rows do not, the catalogue builder shifts them.)
* An optional integer column uses ``-1`` for "absent"; the optional ``query`` column uses ``""``;
  the optional ``rating`` column uses NaN; ``weight`` defaults to 1.
* ``timestamp_ms`` is Unix milliseconds. Events need not be sorted; :meth:`EventTable.sorted`
  orders them by time (stable, so equal times keep their source order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unirank.artifact.catalog import MATURITY_LEVELS
from unirank.artifact.logformat import EventType as EventType  # defined with the log format

NONE = -1
"""The value of an absent optional integer field (anchor item, category)."""


@dataclass
class ItemTable:
    """One row per item; ``categories`` lists category ids, primary first."""

    item_ids: list[str]
    titles: list[str]
    categories: list[list[str]]
    maturity: np.ndarray
    """int64 index into :data:`unirank.artifact.catalog.MATURITY_LEVELS`."""
    release_year: np.ndarray
    """int64, e.g. 1999; 0 when unknown."""

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass
class EventTable:
    """Columnar events; every column has one entry per event."""

    user: np.ndarray
    """int64 row into ``LogData.user_ids``."""
    item: np.ndarray
    """int64 row into ``LogData.items``: the item played, opened or clicked."""
    timestamp_ms: np.ndarray
    """int64 Unix milliseconds."""
    event_type: np.ndarray
    """int8 :class:`EventType`."""
    anchor_item: np.ndarray
    """int64 row into ``LogData.items`` for related clicks, ``-1`` otherwise."""
    category: np.ndarray
    """int64 row into ``LogData.category_ids`` for category clicks, ``-1`` otherwise."""
    query: list[str]
    """Raw query text for search clicks, ``""`` otherwise."""
    rating: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """float64 explicit rating (e.g. 0.5-5 stars), NaN when the source has none."""
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """float64 engagement strength (plays, minutes, 1 for a plain event), >= 0."""

    def __post_init__(self) -> None:
        n = len(self)
        if len(self.rating) != n:
            self.rating = np.full(n, np.nan) if not len(self.rating) else self.rating
        if len(self.weight) != n:
            self.weight = np.ones(n) if not len(self.weight) else self.weight

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, index: np.ndarray) -> EventTable:
        """The events at ``index`` (an int index array or a boolean mask), in that order."""
        rows = np.flatnonzero(index) if index.dtype == np.bool_ else np.asarray(index, dtype=np.int64)
        return EventTable(
            user=self.user[rows],
            item=self.item[rows],
            timestamp_ms=self.timestamp_ms[rows],
            event_type=self.event_type[rows],
            anchor_item=self.anchor_item[rows],
            category=self.category[rows],
            query=[self.query[i] for i in rows.tolist()],
            rating=self.rating[rows],
            weight=self.weight[rows],
        )

    def sorted(self) -> EventTable:
        """The events ordered by time (stable)."""
        return self.take(np.argsort(self.timestamp_ms, kind="stable"))

    @classmethod
    def concat(cls, tables: Sequence[EventTable]) -> EventTable:
        return cls(
            user=np.concatenate([t.user for t in tables]),
            item=np.concatenate([t.item for t in tables]),
            timestamp_ms=np.concatenate([t.timestamp_ms for t in tables]),
            event_type=np.concatenate([t.event_type for t in tables]),
            anchor_item=np.concatenate([t.anchor_item for t in tables]),
            category=np.concatenate([t.category for t in tables]),
            query=[q for t in tables for q in t.query],
            rating=np.concatenate([t.rating for t in tables]) if tables else np.zeros(0),
            weight=np.concatenate([t.weight for t in tables]) if tables else np.zeros(0),
        )

    @classmethod
    def build(
        cls,
        user: np.ndarray,
        item: np.ndarray,
        timestamp_ms: np.ndarray,
        event_type: EventType,
        anchor_item: np.ndarray | None = None,
        category: np.ndarray | None = None,
        query: Sequence[str] | None = None,
        rating: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> EventTable:
        """Events of one type, filling absent optional columns with their defaults."""
        n = int(np.asarray(user).shape[0])
        absent = np.full(n, NONE, dtype=np.int64)
        return cls(
            user=np.asarray(user, dtype=np.int64),
            item=np.asarray(item, dtype=np.int64),
            timestamp_ms=np.asarray(timestamp_ms, dtype=np.int64),
            event_type=np.full(n, int(event_type), dtype=np.int8),
            anchor_item=absent.copy() if anchor_item is None else np.asarray(anchor_item, dtype=np.int64),
            category=absent.copy() if category is None else np.asarray(category, dtype=np.int64),
            query=[""] * n if query is None else list(query),
            rating=np.full(n, np.nan) if rating is None else np.asarray(rating, dtype=np.float64),
            weight=np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64),
        )


@dataclass
class TextTable:
    """Free text a user attached to an item (tags, reviews, typed queries), one row per text."""

    user: np.ndarray
    """int64 row into ``LogData.user_ids``."""
    item: np.ndarray
    """int64 row into ``LogData.items``."""
    text: list[str]
    timestamp_ms: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @classmethod
    def empty(cls) -> TextTable:
        none = np.zeros(0, dtype=np.int64)
        return cls(user=none, item=none.copy(), text=[], timestamp_ms=none.copy())

    def take(self, index: np.ndarray) -> TextTable:
        rows = np.flatnonzero(index) if index.dtype == np.bool_ else np.asarray(index, dtype=np.int64)
        return TextTable(
            user=self.user[rows],
            item=self.item[rows],
            text=[self.text[i] for i in rows.tolist()],
            timestamp_ms=self.timestamp_ms[rows],
        )


@dataclass
class LogData:
    """A source's catalogue and logs in the canonical format."""

    items: ItemTable
    user_ids: list[str]
    category_ids: list[str]
    events: EventTable
    source: str
    """Where the data came from, e.g. ``"synthetic"``; recorded in the artifact manifest."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """What it takes to regenerate or re-read the data (seed, preset, path)."""
    texts: TextTable = field(default_factory=TextTable.empty)
    """Optional user texts about items (MovieLens tags); search labels are made from them."""

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def events_of(self, event_type: EventType) -> EventTable:
        return self.events.take(self.events.event_type == int(event_type))

    def validate(self) -> None:
        """Raise ValueError naming the first broken column or reference."""
        items, events = self.items, self.events
        n_items = len(items)
        for name in ("titles", "categories", "maturity", "release_year"):
            if len(getattr(items, name)) != n_items:
                raise ValueError(f"items.{name} has {len(getattr(items, name))} rows, expected {n_items}")
        if len(set(items.item_ids)) != n_items or "" in items.item_ids:
            raise ValueError("items.item_ids must be unique and non-empty")
        if len(set(self.user_ids)) != len(self.user_ids) or "" in self.user_ids:
            raise ValueError("user_ids must be unique and non-empty")
        known_categories = set(self.category_ids)
        for row, cats in enumerate(items.categories):
            unknown = [c for c in cats if c not in known_categories]
            if unknown:
                raise ValueError(f"item row {row} has categories {unknown} not in category_ids")
        if len(items.maturity) and (items.maturity.min() < 0 or items.maturity.max() >= len(MATURITY_LEVELS)):
            raise ValueError("items.maturity must index MATURITY_LEVELS")
        n = len(events)
        for name in (
            "item",
            "timestamp_ms",
            "event_type",
            "anchor_item",
            "category",
            "query",
            "rating",
            "weight",
        ):
            if len(getattr(events, name)) != n:
                raise ValueError(f"events.{name} has {len(getattr(events, name))} rows, expected {n}")
        if n == 0:
            return
        _check_range("events.user", events.user, 0, len(self.user_ids))
        _check_range("events.item", events.item, 0, n_items)
        _check_range("events.event_type", events.event_type, 0, len(EventType))
        kind = events.event_type
        related = kind == EventType.RELATED_CLICK
        _check_range("events.anchor_item (related clicks)", events.anchor_item[related], 0, n_items)
        if (events.anchor_item[~related] != NONE).any():
            raise ValueError("events.anchor_item must be -1 except on related clicks")
        in_category = kind == EventType.CATEGORY_CLICK
        _check_range(
            "events.category (category clicks)", events.category[in_category], 0, len(self.category_ids)
        )
        if (events.category[~in_category] != NONE).any():
            raise ValueError("events.category must be -1 except on category clicks")
        is_search = kind == EventType.SEARCH_CLICK
        for i in np.flatnonzero(is_search).tolist():
            if not events.query[i].strip():
                raise ValueError(f"event {i}: a search click needs a query")
        if not (events.weight >= 0).all():
            raise ValueError("events.weight must be >= 0 (and not NaN)")
        if np.isinf(events.rating).any():
            raise ValueError("events.rating must be finite or NaN")
        texts = self.texts
        for name in ("item", "text", "timestamp_ms"):
            if len(getattr(texts, name)) != len(texts):
                raise ValueError(f"texts.{name} has {len(getattr(texts, name))} rows, expected {len(texts)}")
        if len(texts):
            _check_range("texts.user", texts.user, 0, len(self.user_ids))
            _check_range("texts.item", texts.item, 0, n_items)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and manifests."""
        counts = np.bincount(self.events.event_type.astype(np.int64), minlength=len(EventType))
        return {
            "source": self.source,
            **self.provenance,
            "n_items": self.n_items,
            "n_users": self.n_users,
            "n_categories": len(self.category_ids),
            "events": {kind.name.lower(): int(counts[kind]) for kind in EventType},
            "texts": len(self.texts),
            "rated_events": int(np.isfinite(self.events.rating).sum()),
        }


def _check_range(name: str, values: np.ndarray, low: int, high: int) -> None:
    if len(values) and (values.min() < low or values.max() >= high):
        raise ValueError(f"{name} must lie in [{low}, {high}), found [{values.min()}, {values.max()}]")
