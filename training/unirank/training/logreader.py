"""Reading UniRank logs: :func:`read_logs` validates while it reads.

Every malformed row is counted under a named problem class, invalid rows are dropped and
reported, and the data is refused (:class:`~unirank.artifact.logformat.LogFormatError`, with the
full report) when a table loses more than ``max_invalid_share`` of its rows or what is left cannot
train anything sensible (no interactions, one user, timestamps that are all equal or look like
milliseconds). The format itself (names, columns, raw table rows) is
:mod:`unirank.artifact.logformat`; docs/data.md is the reference.

    python -m unirank.training.logreader PATH [--json]   # validate a log directory
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact.catalog import MATURITY_LEVELS
from unirank.artifact.eventtime import EVENT_TIME_RANGE, is_valid_event_time_ms
from unirank.artifact.logformat import (
    CATEGORY_SEPARATOR,
    EVENT_TYPE_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_INVALID_SHARE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    REQUIRED_TABLES,
    LogFormatError,
    cell_number,
    cell_text,
    manifest_problem,
    parse_timestamp_ms,
    read_table,
    table_file,
)
from unirank.training.logs import NONE, EventTable, EventType, ItemTable, LogData, TextTable

EXAMPLES_PER_PROBLEM = 3
_MILLISECONDS_HINT = 1e11


@dataclass
class Problem:
    """One class of malformed rows in one table."""

    table: str
    name: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    dropped: bool = True
    """True when the rows are dropped (invalid); False for a warning on rows that are kept."""


@dataclass
class LogReport:
    """What the validator found: row counts, problem classes with counts, and refusals."""

    path: str
    rows: dict[str, int] = field(default_factory=dict)
    """Rows read per table."""
    kept: dict[str, int] = field(default_factory=dict)
    """Rows kept per table after dropping invalid ones."""
    problems: dict[tuple[str, str], Problem] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    """Reasons the data cannot be used; empty when it is accepted."""

    @property
    def ok(self) -> bool:
        return not self.refusals

    def add(self, table: str, name: str, row: int, detail: str = "", dropped: bool = True) -> None:
        problem = self.problems.setdefault((table, name), Problem(table, name, dropped=dropped))
        problem.count += 1
        if len(problem.examples) < EXAMPLES_PER_PROBLEM:
            problem.examples.append(f"row {row}" + (f": {detail}" if detail else ""))

    def refuse(self, reason: str) -> None:
        self.refusals.append(reason)

    def dropped(self, table: str) -> int:
        return self.rows.get(table, 0) - self.kept.get(table, self.rows.get(table, 0))

    def format(self) -> str:
        """A readable report: one line per table, one per problem class, then the verdict."""
        lines = [f"UniRank logs {self.path} (format {FORMAT_NAME} v{FORMAT_VERSION})"]
        for table, n in self.rows.items():
            kept = self.kept.get(table, n)
            lines.append(f"  {table}: {n} rows, {kept} kept, {n - kept} dropped")
        for problem in sorted(self.problems.values(), key=lambda p: (p.table, not p.dropped, -p.count)):
            kind = "invalid, dropped" if problem.dropped else "warning, kept"
            lines.append(
                f"  {problem.table}: {problem.count} rows {problem.name} ({kind}); "
                + "; ".join(problem.examples)
            )
        if self.refusals:
            lines.append("REFUSED:")
            lines.extend(f"  - {reason}" for reason in self.refusals)
        else:
            lines.append("accepted")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": dict(self.rows),
            "kept": dict(self.kept),
            "problems": [
                {
                    "table": p.table,
                    "problem": p.name,
                    "rows": p.count,
                    "dropped": p.dropped,
                    "examples": list(p.examples),
                }
                for p in self.problems.values()
            ],
            "refusals": list(self.refusals),
        }


def read_logs(path: str | Path, max_invalid_share: float = MAX_INVALID_SHARE) -> LogData:
    """Read and validate a UniRank log directory; :class:`LogFormatError` (with the report) if refused."""
    log, report = validate_logs(path, max_invalid_share)
    if log is None or not report.ok:
        raise LogFormatError(report.format())
    if report.problems:
        print(report.format(), file=sys.stderr, flush=True)  # accepted, but dropped rows are never silent
    return log


def validate_logs(
    path: str | Path, max_invalid_share: float = MAX_INVALID_SHARE
) -> tuple[LogData | None, LogReport]:
    """Read ``path`` and report every problem; the logs are None when structurally unreadable."""
    directory = Path(path)
    report = LogReport(str(directory))
    if not directory.is_dir():
        report.refuse(f"{directory} is not a directory")
        return None, report
    problem = manifest_problem(directory)
    if problem is not None:
        report.refuse(problem)
        return None, report

    tables: dict[str, tuple[list[str], Iterator[list[Any]]]] = {}
    for table in ("items", "interactions", "texts"):
        try:
            file = table_file(directory, table)
        except LogFormatError as exc:
            report.refuse(str(exc))
            return None, report
        if file is None:
            if table in REQUIRED_TABLES:
                report.refuse(f"missing {table}.csv or {table}.parquet")
            continue
        try:
            header, rows = read_table(file)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            report.refuse(f"{file.name}: unreadable: {exc}")
            continue
        missing = [c for c in REQUIRED_COLUMNS[table] if c not in header]
        if missing:
            report.refuse(f"{file.name}: missing required columns {missing} (has {header})")
            continue
        if len(set(header)) != len(header):
            report.refuse(f"{file.name}: repeated column names in {header}")
            continue
        unknown = [c for c in header if c not in (*REQUIRED_COLUMNS[table], *OPTIONAL_COLUMNS[table])]
        if unknown:
            report.add(table, f"has unknown columns {unknown} (ignored)", 0, dropped=False)
        tables[table] = (header, rows)
    if not report.ok:
        return None, report
    try:
        log = _build(directory, tables, report)
    except (UnicodeDecodeError, csv.Error) as exc:
        report.refuse(f"unreadable table: {exc}")
        return None, report
    for table, n in report.rows.items():
        dropped = report.dropped(table)
        if n and dropped / n > max_invalid_share:
            report.refuse(
                f"{table}: {dropped} of {n} rows ({dropped / n:.1%}) are invalid, more than the "
                f"{max_invalid_share:.1%} allowed; fix the export (classes above) rather than train on it"
            )
    return log, report


def _columns(
    header: list[str], rows: Iterator[list[Any]], report: LogReport, table: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    width = len(header)
    for number, row in enumerate(rows, start=1):
        report.rows[table] = number
        if len(row) != width:
            report.add(table, f"with {len(row)} fields instead of {width}", number, repr(row)[:80])
            continue
        yield number, dict(zip(header, row, strict=True))
    report.rows.setdefault(table, 0)


def _build(
    directory: Path, tables: dict[str, tuple[list[str], Iterator[list[Any]]]], report: LogReport
) -> LogData | None:
    items = _build_items(*tables["items"], report)
    item_index = {item_id: i for i, item_id in enumerate(items.item_ids)}
    category_ids = sorted({c for cats in items.categories for c in cats})
    category_index = {c: i for i, c in enumerate(category_ids)}
    users: dict[str, int] = {}
    events = _build_interactions(*tables["interactions"], report, item_index, category_index, users)
    texts = (
        _build_texts(*tables["texts"], report, item_index, users) if "texts" in tables else TextTable.empty()
    )
    _check_usable(events, texts, len(users), len(items), report)
    log = LogData(
        items=items,
        user_ids=list(users),
        category_ids=category_ids,
        events=events.sorted(),
        source="logs",
        provenance={"path": str(directory), "format": f"{FORMAT_NAME}/v{FORMAT_VERSION}"},
        texts=texts.take(np.argsort(texts.timestamp_ms, kind="stable")),
    )
    log.validate()
    return log


def _build_items(header: list[str], rows: Iterator[list[Any]], report: LogReport) -> ItemTable:
    ids: list[str] = []
    titles: list[str] = []
    categories: list[list[str]] = []
    years: list[int] = []
    maturity: list[int] = []
    seen: set[str] = set()
    for number, row in _columns(header, rows, report, "items"):
        item_id = cell_text(row["item_id"])
        if not item_id:
            report.add("items", "with an empty item_id", number)
            continue
        if item_id in seen:
            report.add("items", "repeating an earlier item_id (first kept)", number, item_id)
            continue
        year = 0
        raw_year = cell_text(row.get("release_year"))
        if raw_year:
            try:
                year = int(float(raw_year))
            except ValueError:
                year = -1
            if not 0 <= year <= 3000:
                report.add("items", "with a release_year that is not a year", number, raw_year)
                continue
        level = 0
        raw_maturity = cell_text(row.get("maturity"))
        if raw_maturity:
            if raw_maturity not in MATURITY_LEVELS:
                report.add("items", f"with a maturity not in {list(MATURITY_LEVELS)}", number, raw_maturity)
                continue
            level = MATURITY_LEVELS.index(raw_maturity)
        title = cell_text(row["title"])
        if not title:
            report.add("items", "with an empty title", number, item_id, dropped=False)
        cats = [c.strip() for c in cell_text(row["categories"]).split(CATEGORY_SEPARATOR) if c.strip()]
        if not cats:
            report.add("items", "without categories", number, item_id, dropped=False)
        seen.add(item_id)
        ids.append(item_id)
        titles.append(title)
        categories.append(list(dict.fromkeys(cats)))
        years.append(year)
        maturity.append(level)
    report.kept["items"] = len(ids)
    return ItemTable(
        item_ids=ids,
        titles=titles,
        categories=categories,
        maturity=np.asarray(maturity, dtype=np.int64),
        release_year=np.asarray(years, dtype=np.int64),
    )


def _timestamp(report: LogReport, table: str, number: int, raw: Any) -> int | None:
    ms = parse_timestamp_ms(raw)
    if ms is None:
        report.add(
            table, "with a timestamp that is neither Unix seconds nor ISO 8601", number, repr(raw)[:40]
        )
        return None
    if not is_valid_event_time_ms(ms):
        hint = (
            " (looks like milliseconds; the format wants seconds)" if ms >= _MILLISECONDS_HINT * 1000 else ""
        )
        report.add(table, f"with a timestamp outside {EVENT_TIME_RANGE}{hint}", number, repr(raw)[:40])
        return None
    return ms


def _build_interactions(
    header: list[str],
    rows: Iterator[list[Any]],
    report: LogReport,
    item_index: dict[str, int],
    category_index: dict[str, int],
    users: dict[str, int],
) -> EventTable:
    table = "interactions"
    columns: dict[str, list[Any]] = {
        name: []
        for name in ("user", "item", "time", "type", "anchor", "category", "query", "rating", "weight")
    }
    seen_rows: set[tuple[Any, ...]] = set()
    for number, row in _columns(header, rows, report, table):
        user_id, item_id = cell_text(row["user_id"]), cell_text(row["item_id"])
        if not user_id:
            report.add(table, "with an empty user_id", number)
            continue
        if not item_id:
            report.add(table, "with an empty item_id", number)
            continue
        if item_id not in item_index:
            report.add(table, "referencing an item_id missing from items", number, item_id)
            continue
        ms = _timestamp(report, table, number, row["timestamp"])
        if ms is None:
            continue
        type_name = cell_text(row.get("event_type")) or "play"
        if type_name not in EVENT_TYPE_NAMES:
            report.add(table, f"with an event_type not in {list(EVENT_TYPE_NAMES)}", number, type_name)
            continue
        kind = EVENT_TYPE_NAMES[type_name]
        rating = cell_number(row.get("rating"))
        if rating is None:
            report.add(table, "with a rating that is not a number", number, repr(row.get("rating"))[:40])
            continue
        weight = cell_number(row.get("weight"))
        if weight is None or weight < 0:
            report.add(table, "with a weight that is not a number >= 0", number, repr(row.get("weight"))[:40])
            continue
        weight = 1.0 if math.isnan(weight) else weight
        anchor_id, category_id, query = (
            cell_text(row.get("anchor_item_id")),
            cell_text(row.get("category")),
            cell_text(row.get("query")),
        )
        anchor, category = NONE, NONE
        if kind == EventType.RELATED_CLICK:
            if anchor_id not in item_index:
                report.add(
                    table, "related_click without a known anchor_item_id", number, anchor_id or "empty"
                )
                continue
            anchor = item_index[anchor_id]
        elif anchor_id:
            report.add(table, "with anchor_item_id on a non-related event (ignored)", number, dropped=False)
        if kind == EventType.CATEGORY_CLICK:
            if category_id not in category_index:
                report.add(
                    table, "category_click without a category used by items", number, category_id or "empty"
                )
                continue
            category = category_index[category_id]
        elif category_id:
            report.add(table, "with category on a non-category event (ignored)", number, dropped=False)
        if kind == EventType.SEARCH_CLICK:
            if not query:
                report.add(table, "search_click without a query", number)
                continue
        elif query:
            report.add(table, "with query on a non-search event (ignored)", number, dropped=False)
            query = ""
        key = (user_id, item_id, ms, int(kind), anchor, category, query)
        if key in seen_rows:
            report.add(table, "repeating an identical earlier interaction", number, f"{user_id} {item_id}")
            continue
        seen_rows.add(key)
        columns["user"].append(users.setdefault(user_id, len(users)))
        columns["item"].append(item_index[item_id])
        columns["time"].append(ms)
        columns["type"].append(int(kind))
        columns["anchor"].append(anchor)
        columns["category"].append(category)
        columns["query"].append(query)
        columns["rating"].append(rating)
        columns["weight"].append(weight)
    report.kept[table] = len(columns["user"])
    return EventTable(
        user=np.asarray(columns["user"], dtype=np.int64),
        item=np.asarray(columns["item"], dtype=np.int64),
        timestamp_ms=np.asarray(columns["time"], dtype=np.int64),
        event_type=np.asarray(columns["type"], dtype=np.int8),
        anchor_item=np.asarray(columns["anchor"], dtype=np.int64),
        category=np.asarray(columns["category"], dtype=np.int64),
        query=columns["query"],
        rating=np.asarray(columns["rating"], dtype=np.float64),
        weight=np.asarray(columns["weight"], dtype=np.float64),
    )


def _build_texts(
    header: list[str],
    rows: Iterator[list[Any]],
    report: LogReport,
    item_index: dict[str, int],
    users: dict[str, int],
) -> TextTable:
    table = "texts"
    user, item, times, texts = [], [], [], []
    for number, row in _columns(header, rows, report, table):
        user_id, item_id, text = cell_text(row["user_id"]), cell_text(row["item_id"]), cell_text(row["text"])
        if not user_id:
            report.add(table, "with an empty user_id", number)
            continue
        if item_id not in item_index:
            report.add(table, "referencing an item_id missing from items", number, item_id or "empty")
            continue
        if not text:
            report.add(table, "with an empty text", number)
            continue
        ms = _timestamp(report, table, number, row["timestamp"])
        if ms is None:
            continue
        user.append(users.setdefault(user_id, len(users)))
        item.append(item_index[item_id])
        times.append(ms)
        texts.append(text)
    report.kept[table] = len(user)
    return TextTable(
        user=np.asarray(user, dtype=np.int64),
        item=np.asarray(item, dtype=np.int64),
        text=texts,
        timestamp_ms=np.asarray(times, dtype=np.int64),
    )


def _check_usable(
    events: EventTable, texts: TextTable, n_users: int, n_items: int, report: LogReport
) -> None:
    """Refusals for data that parses but cannot train anything sensible."""
    if not len(events):
        report.refuse("no valid interactions")
        return
    if n_users < 2 or n_items < 2:
        report.refuse(f"{n_users} users and {n_items} items: need at least 2 of each")
    if len(np.unique(events.timestamp_ms)) < 2:
        report.refuse("every interaction has the same timestamp: there is no time order to split by")
    has_rating = np.isfinite(events.rating)
    if has_rating.any() and len(np.unique(events.rating[has_rating])) < 2:
        report.add(
            "interactions", "rated, all with one rating value (ratings carry no signal)", 0, dropped=False
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unirank.training.logreader PATH [--json]``: validate a log directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    paths = [a for a in args if a != "--json"]
    if len(paths) != 1:
        print("usage: python -m unirank.training.logreader PATH [--json]", file=sys.stderr)
        return 2
    _, report = validate_logs(paths[0])
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
