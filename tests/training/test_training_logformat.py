"""The UniRank log format: round trips for every source, and a validator that names every problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unirank.artifact.logformat import MANIFEST_FILE, LogFormatError, parse_timestamp_ms
from unirank.training.logreader import main, read_logs, validate_logs
from unirank.training.logs import EventType, LogData
from unirank.training.logwriter import write_logs
from unirank.training.sources import DataSpecError, load_logs
from unirank.training.synthetic import SyntheticConfig, generate

ITEMS = (
    "item_id,title,categories,release_year,maturity\n"
    "m1,Red Moon,drama|scifi,1999,13+\n"
    "m2,Blue Moon,drama,,\n"
    "m3,Green Field,comedy,2020,all\n"
)
GOOD_INTERACTIONS = (
    "user_id,item_id,timestamp,rating,event_type,anchor_item_id,category,query\n"
    "u1,m1,1700000000,4.5,,,,\n"
    "u1,m2,2023-11-14T22:14:00Z,,play,,,\n"
    "u2,m3,1700000100.5,3,,,,\n"
    "u2,m2,1700000200,,related_click,m3,,\n"
    "u2,m1,1700000300,,search_click,,,red moon\n"
    "u1,m3,1700000400,,category_click,,comedy,\n"
)


def _logs(directory: Path, interactions: str, items: str = ITEMS, texts: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).write_text(json.dumps({"format": "unirank-logs", "version": 1}))
    (directory / "items.csv").write_text(items)
    (directory / "interactions.csv").write_text(interactions)
    if texts is not None:
        (directory / "texts.csv").write_text(texts)
    return directory


def _same_logs(a: LogData, b: LogData) -> None:
    assert a.items.item_ids == b.items.item_ids and a.items.titles == b.items.titles
    assert a.items.categories == b.items.categories
    np.testing.assert_array_equal(a.items.maturity, b.items.maturity)
    np.testing.assert_array_equal(a.items.release_year, b.items.release_year)
    ea, eb = a.events, b.events
    assert [a.user_ids[u] for u in ea.user] == [b.user_ids[u] for u in eb.user]
    for name in ("item", "timestamp_ms", "event_type", "anchor_item"):
        np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name), err_msg=name)
    assert [a.category_ids[c] if c >= 0 else "" for c in ea.category] == [
        b.category_ids[c] if c >= 0 else "" for c in eb.category
    ]
    assert ea.query == eb.query
    np.testing.assert_array_equal(ea.rating, eb.rating)
    assert a.texts.text == b.texts.text


def test_synthetic_logs_round_trip_through_csv(tmp_path: Path) -> None:
    log = generate(SyntheticConfig.preset("tiny"), seed=2)
    again = read_logs(write_logs(log, tmp_path / "synthetic"))
    _same_logs(log, again)
    assert again.source == "logs"


def test_movielens_style_logs_round_trip_through_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    log = read_logs(
        _logs(
            tmp_path / "csv",
            GOOD_INTERACTIONS,
            texts="user_id,item_id,text,timestamp\nu1,m1,space,1700000001\n",
        )
    )
    again = read_logs(write_logs(log, tmp_path / "parquet", file_format="parquet"))
    assert (tmp_path / "parquet" / "interactions.parquet").is_file()
    _same_logs(log, again)


def test_a_clean_directory_reads_every_column(tmp_path: Path) -> None:
    log = read_logs(_logs(tmp_path, GOOD_INTERACTIONS))
    assert log.items.maturity.tolist() == [2, 0, 0] and log.items.release_year.tolist() == [1999, 0, 2020]
    assert log.category_ids == ["comedy", "drama", "scifi"]
    kinds = sorted(EventType(k).name for k in log.events.event_type.tolist())
    assert kinds == ["CATEGORY_CLICK", "PLAY", "PLAY", "PLAY", "RELATED_CLICK", "SEARCH_CLICK"]
    assert log.events.timestamp_ms.tolist()[:2] == [1_700_000_000_000, 1_700_000_040_000]  # ISO 8601 too
    assert np.isnan(log.events.rating).sum() == 4
    assert load_logs(f"logs:{tmp_path}").n_items == 3


def test_every_malformed_row_class_is_counted(tmp_path: Path) -> None:
    rows = GOOD_INTERACTIONS.splitlines()
    rows += [f"u{i},m1,{1_700_000_500 + i},4,,,," for i in range(300)]  # plenty of good rows
    rows += [
        ",m1,1700000000,,,,,",  # empty user
        "u9,m404,1700000000,,,,,",  # unknown item
        "u9,m404,1700000001,,,,,",
        "u9,m1,yesterday,,,,,",  # bad timestamp
        "u9,m1,1700000000000,,,,,",  # milliseconds
        "u9,m1,1700000000,great,,,,",  # bad rating
        "u9,m1,1700000000,,teleport,,,",  # unknown event type
        "u9,m1,1700000000,,related_click,,,",  # related click without anchor
        "u9,m1,1700000000,,search_click,,,",  # search without query
        "u1,m1,1700000000,4.5,,,,",  # duplicate of the first row
    ]
    _, report = validate_logs(_logs(tmp_path, "\n".join(rows) + "\n"), max_invalid_share=0.05)
    counts = {problem.name: problem.count for problem in report.problems.values()}
    assert counts["referencing an item_id missing from items"] == 2
    assert counts["with an empty user_id"] == 1
    assert counts["with a timestamp that is neither Unix seconds nor ISO 8601"] == 1
    assert (
        counts["with a timestamp outside 1970-2100 (looks like milliseconds; the format wants seconds)"] == 1
    )
    assert counts["with a rating that is not a number"] == 1
    assert counts["related_click without a known anchor_item_id"] == 1
    assert counts["search_click without a query"] == 1
    assert counts["repeating an identical earlier interaction"] == 1
    assert any("event_type not in" in name for name in counts)
    assert report.ok and report.dropped("interactions") == 10
    text = report.format()
    assert "row 308" in text and "accepted" in text  # examples name the rows


def test_too_many_bad_rows_are_refused(tmp_path: Path) -> None:
    bad = GOOD_INTERACTIONS + "".join(f"u{i},m1,{1_700_000_000_000 + i},,,,,\n" for i in range(10))
    with pytest.raises(LogFormatError, match=r"interactions: 10 of 16 rows .* are invalid"):
        read_logs(_logs(tmp_path, bad))
    with pytest.raises(DataSpecError, match="REFUSED"):
        load_logs(f"logs:{tmp_path}")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / MANIFEST_FILE).unlink(), "no unirank-logs.json"),
        (lambda d: (d / MANIFEST_FILE).write_text('{"format": "unirank-logs", "version": 9}'), "version 9"),
        (lambda d: (d / "items.csv").unlink(), "missing items.csv"),
        (
            lambda d: (d / "interactions.csv").write_text("user_id,item_id\nu1,m1\n"),
            r"missing required columns \['timestamp'\]",
        ),
        (
            lambda d: (d / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,m1,5\nu2,m2,5\n"),
            "same timestamp",
        ),
    ],
)
def test_structural_problems_are_refused(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    directory = _logs(tmp_path, GOOD_INTERACTIONS)
    change(directory)
    with pytest.raises(LogFormatError, match=message):
        read_logs(directory)


def test_items_and_texts_are_checked_too(tmp_path: Path) -> None:
    items = ITEMS + "m1,Again,drama,,\nm4,Odd,drama,19x9,\nm5,Kids,family,2001,PG\nm6,,drama,,\n"
    texts = "user_id,item_id,text,timestamp\nu1,m1,,1700000000\nu1,m9,fun,1700000000\nu1,m1,fun,1700000000\n"
    _, report = validate_logs(_logs(tmp_path, GOOD_INTERACTIONS, items, texts), max_invalid_share=0.9)
    names = {(p.table, p.name): (p.count, p.dropped) for p in report.problems.values()}
    assert names[("items", "repeating an earlier item_id (first kept)")] == (1, True)
    assert names[("items", "with a release_year that is not a year")] == (1, True)
    assert names[("items", "with a maturity not in ['all', '7+', '13+', '16+', '18+']")] == (1, True)
    assert names[("items", "with an empty title")] == (1, False)  # a warning: the row is kept
    assert names[("texts", "with an empty text")] == (1, True)
    assert names[("texts", "referencing an item_id missing from items")] == (1, True)


def test_timestamps() -> None:
    assert parse_timestamp_ms("1700000000") == 1_700_000_000_000
    assert parse_timestamp_ms(1700000000.25) == 1_700_000_000_250
    assert parse_timestamp_ms("1970-01-01T00:00:01") == 1000  # no zone: UTC
    assert parse_timestamp_ms("2001-01-01T01:00:00+01:00") == 978_307_200_000
    assert parse_timestamp_ms("soon") is None and parse_timestamp_ms("") is None


def test_validator_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _logs(tmp_path, GOOD_INTERACTIONS)
    assert main([str(directory)]) == 0
    assert "accepted" in capsys.readouterr().out
    (directory / MANIFEST_FILE).unlink()
    assert main([str(directory), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["refusals"]
