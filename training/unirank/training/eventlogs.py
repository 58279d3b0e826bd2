"""Server event logs -> training logs: base logs plus the events RecordEvents accepted.

A server whose profile sets ``[features] event_log = "PATH"`` appends every accepted event to a
CSV file with the UniRank log format's interactions columns (``user_id, item_id, timestamp,
event_type``). This module writes a new log directory (docs/data.md) holding the base logs and
those events, validated by the log format's own validator, ready for
``unirank train --warm-start PARENT --data logs:OUT``::

    python -m unirank.training.eventlogs --base logs:exports/2026-05 \\
        --events /var/lib/unirank/events.csv --out exports/2026-06

Before the validator sees them, event rows repeated exactly (a retried RecordEvents call) are
dropped and counted, and so are rows about items the base logs do not have (the server only
accepts items of the model it serves, so these appear only when the base logs lack items the
model knows). Every other problem is the validator's: it drops and reports bad rows and refuses
the data when more than 1 % of a table is invalid.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unirank.artifact.logformat import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, LogFormatError
from unirank.training.logreader import LogReport, validate_logs
from unirank.training.logs import LogData
from unirank.training.logwriter import write_logs
from unirank.training.sources import USAGE, DataSpecError, load_logs, parse_data_spec

INTERACTIONS = "interactions.csv"


@dataclass
class EventMerge:
    """What :func:`merge_event_logs` did."""

    out: Path
    base_interactions: int
    event_rows: int = 0
    duplicates: int = 0
    """Event rows identical to an earlier one: dropped."""
    unknown_items: int = 0
    """Event rows about items missing from the base logs' items: dropped."""
    appended: int = 0
    report: LogReport = field(default_factory=lambda: LogReport(""))
    """The validator's report on the merged directory."""

    def format(self) -> str:
        return (
            f"{self.out}: {self.base_interactions} base interactions + {self.appended} events "
            f"({self.event_rows} logged, {self.duplicates} exact repeats and {self.unknown_items} "
            f"about items missing from the base logs dropped)\n{self.report.format()}"
        )


def merge_event_logs(base: LogData, event_logs: Sequence[Path], out: Path) -> EventMerge:
    """Write ``base`` and the rows of ``event_logs`` as one validated log directory ``out``.

    ``out`` must be missing or empty. Raises :class:`LogFormatError` (with the validator's report)
    when an event log is not an interactions table or the merged logs are refused.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; merge into a new directory")
    write_logs(base, out)
    with (out / INTERACTIONS).open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    merge = EventMerge(out=out, base_interactions=len(base.events))
    known_items = set(base.items.item_ids)
    allowed = (*REQUIRED_COLUMNS["interactions"], *OPTIONAL_COLUMNS["interactions"])
    seen: set[tuple[str, ...]] = set()
    appended: list[list[str]] = []
    for path in event_logs:
        with Path(path).open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            columns = [c.strip() for c in next(reader, [])]
            missing = [c for c in REQUIRED_COLUMNS["interactions"] if c not in columns]
            unknown = [c for c in columns if c not in allowed]
            if missing or unknown:
                raise LogFormatError(
                    f"{path}: not an interactions table of the UniRank log format: "
                    f"missing columns {missing}, unknown columns {unknown}"
                )
            item_column = columns.index("item_id")
            for row in reader:
                if not row:
                    continue
                merge.event_rows += 1
                key = tuple(row)
                if key in seen:
                    merge.duplicates += 1
                    continue
                seen.add(key)
                if item_column >= len(row) or row[item_column] not in known_items:
                    merge.unknown_items += 1
                    continue
                values = dict(zip(columns, row, strict=False))
                appended.append([values.get(name, "") for name in header])
    with (out / INTERACTIONS).open("a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(appended)
    merge.appended = len(appended)
    _, merge.report = validate_logs(out)
    if not merge.report.ok:
        raise LogFormatError(merge.report.format())
    return merge


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unirank.training.eventlogs --base SPEC --events FILE... --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m unirank.training.eventlogs",
        description="Write base logs plus server event logs as one UniRank log directory.",
    )
    parser.add_argument("--base", required=True, help=f"the base logs, a data spec: {USAGE}")
    parser.add_argument("--size", default="default", help="synthetic preset of --base synthetic")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed of --base synthetic")
    parser.add_argument(
        "--events", type=Path, nargs="+", required=True, help="event log CSV files ([features] event_log)"
    )
    parser.add_argument("--out", type=Path, required=True, help="new log directory (missing or empty)")
    args = parser.parse_args(argv)
    try:
        base = load_logs(parse_data_spec(args.base), size=args.size, seed=args.seed)
        merge = merge_event_logs(base, args.events, args.out)
    except (DataSpecError, LogFormatError, FileExistsError, OSError) as exc:
        print(f"eventlogs: error: {exc}", file=sys.stderr)
        return 1
    print(merge.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
