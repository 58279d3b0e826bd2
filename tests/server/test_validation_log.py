"""Validation rows read from a UniRank log for the offline gate's re-scoring (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unirank.server.validation import MISSED, ValidationLogError, _ranks, metric_value, read_rows

from ..conftest import profile_with

ITEMS = (
    "item_id,title,categories,release_year\na,Alpha,drama,1990\nb,Beta,drama|comedy,2022\nc,Gamma,comedy,\n"
)
INTERACTIONS = """user_id,item_id,timestamp,event_type,anchor_item_id,category,query
u1,a,1000,play,,,
u1,a,1001,notification_open,,,
u1,c,1002,notification_open,,,
u1,b,1700000000,play,,,
u1,b,1700000001,related_click,a,,
u2,c,1003,search_click,,,gamma
u2,b,1004,category_click,,comedy,
u2,b,1005,search_click,,,
"""


def write_log(directory: Path, interactions: str = INTERACTIONS) -> Path:
    directory.mkdir()
    (directory / "unirank-logs.json").write_text(json.dumps({"format": "unirank-logs", "version": 1}))
    (directory / "items.csv").write_text(ITEMS)
    (directory / "interactions.csv").write_text(interactions)
    return directory


def test_each_surface_event_is_a_row_of_its_use_case(tmp_path: Path) -> None:
    rows = read_rows(write_log(tmp_path / "log"), max_rows=100)
    notification = rows["notification"]
    # u1 had played a: reopening it is no first play, so only c is a notification row
    assert [(r.item_id, r.context.history_item_ids) for r in notification] == [("c", ("a",))]
    assert [(r.item_id, r.context.anchor_item_id) for r in rows["related_items"]] == [("b", "a")]
    assert [(r.item_id, r.context.query) for r in rows["search"]] == [("c", "gamma")]  # no query: skipped
    assert [(r.item_id, r.context.category_id) for r in rows["category"]] == [("b", "comedy")]
    # b (2022) is new when played in 2023; a (1990) played in 1970 is not
    assert [r.item_id for r in rows["new_releases"]] == ["b"]
    assert rows["related_items"][0].context.history_item_ids == ("a", "b")  # earlier plays only


def test_rows_are_capped_evenly_over_the_log(tmp_path: Path) -> None:
    clicks = "".join(f"u{i},c,{2000 + i},search_click,,,gamma\n" for i in range(10))
    rows = read_rows(write_log(tmp_path / "log", INTERACTIONS + clicks), max_rows=3)
    assert [r.context.user_id for r in rows["search"]] == ["u2", "u4", "u9"]


def test_an_unreadable_log_says_why(tmp_path: Path) -> None:
    with pytest.raises(ValidationLogError, match="not a directory"):
        read_rows(tmp_path / "missing", 10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationLogError, match=r"unirank-logs\.json"):
        read_rows(tmp_path / "empty", 10)


def test_ranks_and_metrics_follow_the_training_definition() -> None:
    scores = np.array([[0.9, 0.5, 0.1, 7.0], [0.2, 0.8, 0.3, 0.0]])
    # row 0: three real candidates (the 4th column is padding), positive at column 1 -> rank 1;
    # row 1: its positive is no candidate -> past any cut-off
    ranks = _ranks(scores, np.array([1, -1]), np.array([3, 4]))
    assert ranks.tolist() == [1, MISSED]
    assert metric_value("ndcg@10", ranks) == pytest.approx((1 / np.log2(3)) / 2)
    assert metric_value("recall@1", ranks) == 0.0 and metric_value("mrr", ranks) == pytest.approx(0.25)


def test_a_metric_that_cannot_be_rescored_fails_the_profile() -> None:
    from unirank.server.config import ProfileError

    with pytest.raises((ProfileError, ValueError), match="validation_logs"):
        profile_with(gate={"validation_logs": "x"}, tasks={"search": {"gate": {"metric": "coverage@10"}}})
