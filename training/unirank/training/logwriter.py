"""Writes any :class:`LogData` (synthetic, MovieLens) as a UniRank log directory, so every source can
be exported, inspected and read back through the one validator (:mod:`unirank.training.logreader`)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unirank.artifact.catalog import MATURITY_LEVELS
from unirank.artifact.logformat import (
    CATEGORY_SEPARATOR,
    EVENT_TYPE_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    LogFormatError,
)
from unirank.training.logs import NONE, LogData


def _seconds(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}"


def _item_rows(log: LogData) -> tuple[list[str], list[list[Any]]]:
    items = log.items
    rows = [
        [
            items.item_ids[i],
            items.titles[i],
            CATEGORY_SEPARATOR.join(items.categories[i]),
            int(items.release_year[i]) or "",
            MATURITY_LEVELS[int(items.maturity[i])],
        ]
        for i in range(len(items))
    ]
    return ["item_id", "title", "categories", "release_year", "maturity"], rows


def _interaction_rows(log: LogData) -> tuple[list[str], list[list[Any]]]:
    events = log.events
    names = {int(kind): name for name, kind in EVENT_TYPE_NAMES.items()}
    item_ids, user_ids = log.items.item_ids, log.user_ids
    rows = []
    for e in range(len(events)):
        anchor, category, rating = int(events.anchor_item[e]), int(events.category[e]), events.rating[e]
        rows.append(
            [
                user_ids[int(events.user[e])],
                item_ids[int(events.item[e])],
                _seconds(int(events.timestamp_ms[e])),
                "" if math.isnan(rating) else f"{rating:g}",
                f"{events.weight[e]:g}",
                names[int(events.event_type[e])],
                item_ids[anchor] if anchor != NONE else "",
                log.category_ids[category] if category != NONE else "",
                events.query[e],
            ]
        )
    header = [
        "user_id",
        "item_id",
        "timestamp",
        "rating",
        "weight",
        "event_type",
        "anchor_item_id",
        "category",
        "query",
    ]
    return header, rows


def _text_rows(log: LogData) -> tuple[list[str], list[list[Any]]]:
    texts = log.texts
    rows = [
        [
            log.user_ids[int(texts.user[r])],
            log.items.item_ids[int(texts.item[r])],
            texts.text[r],
            _seconds(int(texts.timestamp_ms[r])),
        ]
        for r in range(len(texts))
    ]
    return ["user_id", "item_id", "text", "timestamp"], rows


def write_logs(log: LogData, path: str | Path, file_format: str = "csv") -> Path:
    """Write ``log`` as a UniRank log directory (``csv`` or ``parquet`` tables); returns the directory."""
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"file_format must be 'csv' or 'parquet', not {file_format!r}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": log.source}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    makers: list[tuple[str, Callable[[LogData], tuple[list[str], list[list[Any]]]]]] = [
        ("items", _item_rows),
        ("interactions", _interaction_rows),
    ]
    if len(log.texts):
        makers.append(("texts", _text_rows))
    for table, make in makers:
        header, rows = make(log)
        _write_table(directory / f"{table}.{file_format}", header, rows)
    return directory


def _write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the environment
            raise LogFormatError("writing Parquet needs pyarrow (pip install pyarrow)") from None
        columns = {name: [str(row[i]) for row in rows] for i, name in enumerate(header)}
        pq.write_table(pa.table(columns), path)
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
