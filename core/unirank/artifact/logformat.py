"""The UniRank log format (version 1): what a log directory holds, and how its tables are read.

A log directory holds a small manifest and two or three tables, each as CSV (UTF-8, header row)
or Parquet (same column names)::

    unirank-logs.json   {"format": "unirank-logs", "version": 1}
    items.csv           item_id, title, categories[, release_year][, maturity]
    interactions.csv    user_id, item_id, timestamp[, rating][, weight][, event_type]
                        [, anchor_item_id][, category][, query]
    texts.csv           (optional) user_id, item_id, text, timestamp

docs/data.md is the reference (types, rules, examples). This module is the format itself: names,
columns, event types, timestamps, and the raw rows of a table. :mod:`unirank.training.logreader`
reads a directory into :class:`~unirank.training.logs.LogData`, validating every row, and
:mod:`unirank.training.logwriter` writes one; both build on this module and on nothing of each other.
It sits beside the artifact (standard library only) because the server reads the format too: the
offline gate re-scores versions on a validation log (:mod:`unirank.server.validation`).
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class EventType(enum.IntEnum):
    """What a logged event records. Plays build histories; the others are task labels."""

    PLAY = 0
    """Any engagement with ``item`` (a play, a rating, a purchase); the log format calls it ``play``."""
    NOTIFICATION_OPEN = 1
    """The user opened a push notification about ``item``."""
    RELATED_CLICK = 2
    """On the page of ``anchor_item`` the user clicked the related item ``item``."""
    SEARCH_CLICK = 3
    """After searching for ``query`` the user clicked ``item``."""
    CATEGORY_CLICK = 4
    """In the row of ``category`` the user clicked ``item``."""


FORMAT_NAME = "unirank-logs"
FORMAT_VERSION = 1
MANIFEST_FILE = "unirank-logs.json"
CATEGORY_SEPARATOR = "|"
MAX_INVALID_SHARE = 0.01
"""Default share of a table's rows that may be invalid (dropped, reported) before the data is refused."""

EVENT_TYPE_NAMES: dict[str, EventType] = {
    "play": EventType.PLAY,
    "notification_open": EventType.NOTIFICATION_OPEN,
    "related_click": EventType.RELATED_CLICK,
    "search_click": EventType.SEARCH_CLICK,
    "category_click": EventType.CATEGORY_CLICK,
}
"""``event_type`` values; an empty or absent ``event_type`` means ``play``."""

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "items": ("item_id", "title", "categories"),
    "interactions": ("user_id", "item_id", "timestamp"),
    "texts": ("user_id", "item_id", "text", "timestamp"),
}
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "items": ("release_year", "maturity"),
    "interactions": ("rating", "weight", "event_type", "anchor_item_id", "category", "query"),
    "texts": (),
}
REQUIRED_TABLES: tuple[str, ...] = ("items", "interactions")


class LogFormatError(ValueError):
    """The directory is not valid UniRank logs; the message is the full validation report."""


def manifest_problem(directory: Path) -> str | None:
    """Why ``directory``'s manifest is not this format and version; None when it is."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        return (
            f'no {MANIFEST_FILE}; write {{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}}} '
            "into it (docs/data.md)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{MANIFEST_FILE} is not valid JSON: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return f"{MANIFEST_FILE}: format must be {FORMAT_NAME!r}"
    if manifest.get("version") != FORMAT_VERSION:
        version = manifest.get("version")
        return f"{MANIFEST_FILE}: version {version!r} is not supported (this reader: {FORMAT_VERSION})"
    return None


def table_file(directory: Path, table: str) -> Path | None:
    found = [
        directory / f"{table}.{ext}" for ext in ("csv", "parquet") if (directory / f"{table}.{ext}").is_file()
    ]
    if len(found) > 1:
        raise LogFormatError(f"{directory}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def _read_csv(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    handle = path.open("r", encoding="utf-8-sig", newline="")  # newline="": \r\n inside rows is fine
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        return [], iter(())

    def rows() -> Iterator[list[str]]:
        with handle:
            for row in reader:
                if row:  # a blank line is not a row
                    yield row

    return [h.strip() for h in header], rows()


def _read_parquet(path: Path) -> tuple[list[str], Iterator[list[Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise LogFormatError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow, or the unirank[quality] extra)"
        ) from None
    table = pq.read_table(path)
    columns = [table.column(name).to_pylist() for name in table.column_names]
    return list(table.column_names), (list(row) for row in zip(*columns, strict=True))


def read_table(path: Path) -> tuple[list[str], Iterator[list[Any]]]:
    return _read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)


def cell_text(value: Any) -> str:
    """A cell as stripped text; empty for a missing value (None, or NaN from Parquet)."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def parse_timestamp_ms(value: Any) -> int | None:
    """Unix seconds (int, decimal, or a numeric string) or an ISO 8601 string -> Unix ms; None if invalid.

    ISO strings without a time zone are taken as UTC.
    """
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return round(moment.timestamp() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = cell_text(value)
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return round(moment.timestamp() * 1000)
    if not math.isfinite(seconds):
        return None
    return round(seconds * 1000)


def cell_number(value: Any) -> float | None:
    """A finite float, NaN for empty, None when not a number."""
    text = cell_text(value)
    if not text:
        return math.nan
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
