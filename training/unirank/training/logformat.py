"""The UniRank log format (version 1): files any platform can export, read into :class:`LogData`.

A log directory holds a small manifest and two or three tables, each as CSV (UTF-8, header row)
or Parquet (same column names)::

    unirank-logs.json   {"format": "unirank-logs", "version": 1}
    items.csv           item_id, title, categories[, release_year][, maturity]
    interactions.csv    user_id, item_id, timestamp[, rating][, weight][, event_type]
                        [, anchor_item_id][, category][, query]
    texts.csv           (optional) user_id, item_id, text, timestamp

docs/data.md is the reference (types, rules, examples). :func:`read_logs` validates while it
reads: every malformed row is counted under a named problem class, invalid rows are dropped and
reported, and the data is refused (:class:`LogFormatError`, with the full report) when a table
loses more than ``max_invalid_share`` of its rows or what is left cannot train anything sensible
(no interactions, one user, timestamps that are all equal or look like milliseconds).

:func:`unirank.training.logwriter.write_logs` writes any :class:`LogData` (synthetic, MovieLens) in
the same format, so every source can be exported, inspected and read back through the one validator.
"""

from __future__ import annotations

import csv
import datetime as dt
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
from unirank.training.logs import NONE, EventTable, EventType, ItemTable, LogData, TextTable

FORMAT_NAME = "unirank-logs"
FORMAT_VERSION = 1
MANIFEST_FILE = "unirank-logs.json"
CATEGORY_SEPARATOR = "|"
MAX_INVALID_SHARE = 0.01
"""Default share of a table's rows that may be invalid (dropped, reported) before the data is refused."""
EXAMPLES_PER_PROBLEM = 3

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

_MILLISECONDS_HINT = 1e11


class LogFormatError(ValueError):
    """The directory is not valid UniRank logs; the message is the full validation report."""


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


# --- reading tables ---------------------------------------------------------------------------


def _table_file(directory: Path, table: str) -> Path | None:
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


def _read_table(path: Path) -> tuple[list[str], Iterator[list[Any]]]:
    return _read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)


def _text(value: Any) -> str:
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
        text = _text(value)
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


def _number(value: Any) -> float | None:
    """A finite float, NaN for empty, None when not a number."""
    text = _text(value)
    if not text:
        return math.nan
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


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
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        report.refuse(
            f'no {MANIFEST_FILE}; write {{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}}} '
            "into it (docs/data.md)"
        )
        return None, report
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.refuse(f"{MANIFEST_FILE} is not valid JSON: {exc}")
        return None, report
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        report.refuse(f"{MANIFEST_FILE}: format must be {FORMAT_NAME!r}")
        return None, report
    if manifest.get("version") != FORMAT_VERSION:
        report.refuse(
            f"{MANIFEST_FILE}: version {manifest.get('version')!r} is not supported "
            f"(this reader: {FORMAT_VERSION})"
        )
        return None, report

    tables: dict[str, tuple[list[str], Iterator[list[Any]]]] = {}
    for table in ("items", "interactions", "texts"):
        try:
            file = _table_file(directory, table)
        except LogFormatError as exc:
            report.refuse(str(exc))
            return None, report
        if file is None:
            if table in REQUIRED_TABLES:
                report.refuse(f"missing {table}.csv or {table}.parquet")
            continue
        try:
            header, rows = _read_table(file)
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
        item_id = _text(row["item_id"])
        if not item_id:
            report.add("items", "with an empty item_id", number)
            continue
        if item_id in seen:
            report.add("items", "repeating an earlier item_id (first kept)", number, item_id)
            continue
        year = 0
        raw_year = _text(row.get("release_year"))
        if raw_year:
            try:
                year = int(float(raw_year))
            except ValueError:
                year = -1
            if not 0 <= year <= 3000:
                report.add("items", "with a release_year that is not a year", number, raw_year)
                continue
        level = 0
        raw_maturity = _text(row.get("maturity"))
        if raw_maturity:
            if raw_maturity not in MATURITY_LEVELS:
                report.add("items", f"with a maturity not in {list(MATURITY_LEVELS)}", number, raw_maturity)
                continue
            level = MATURITY_LEVELS.index(raw_maturity)
        title = _text(row["title"])
        if not title:
            report.add("items", "with an empty title", number, item_id, dropped=False)
        cats = [c.strip() for c in _text(row["categories"]).split(CATEGORY_SEPARATOR) if c.strip()]
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
        user_id, item_id = _text(row["user_id"]), _text(row["item_id"])
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
        type_name = _text(row.get("event_type")) or "play"
        if type_name not in EVENT_TYPE_NAMES:
            report.add(table, f"with an event_type not in {list(EVENT_TYPE_NAMES)}", number, type_name)
            continue
        kind = EVENT_TYPE_NAMES[type_name]
        rating = _number(row.get("rating"))
        if rating is None:
            report.add(table, "with a rating that is not a number", number, repr(row.get("rating"))[:40])
            continue
        weight = _number(row.get("weight"))
        if weight is None or weight < 0:
            report.add(table, "with a weight that is not a number >= 0", number, repr(row.get("weight"))[:40])
            continue
        weight = 1.0 if math.isnan(weight) else weight
        anchor_id, category_id, query = (
            _text(row.get("anchor_item_id")),
            _text(row.get("category")),
            _text(row.get("query")),
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
        user_id, item_id, text = _text(row["user_id"]), _text(row["item_id"]), _text(row["text"])
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


# --- writing ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unirank.training.logformat PATH [--json]``: validate a log directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    paths = [a for a in args if a != "--json"]
    if len(paths) != 1:
        print("usage: python -m unirank.training.logformat PATH [--json]", file=sys.stderr)
        return 2
    _, report = validate_logs(paths[0])
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
