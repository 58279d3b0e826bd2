"""Ranking metrics and the popularity baselines on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unirank.artifact import Catalog, Context, FeatureEncoder, ModelInputs, TaskType, metrics
from unirank.training.baselines import (
    CoEngagement,
    PopularityScorer,
    TaskAwarePopularityScorer,
    popularity_order,
)
from unirank.training.dataset import Dataset
from unirank.training.evaluate import CandidateSets, rank_rows
from unirank.training.logs import EventTable, EventType, ItemTable, LogData
from unirank.training.scoring import Batch


def test_positive_ranks_count_better_items_and_split_ties() -> None:
    scores = np.array(
        [
            [0.9, 0.5, 0.1, 0.3],  # positive col 0: best -> rank 0
            [0.9, 0.5, 0.1, 0.3],  # positive col 2: worst -> rank 3
            [0.2, 0.2, 0.2, 0.2],  # all tied: 3 others tie -> rank 3 // 2 = 1
            [0.5, -np.inf, 0.4, 0.1],  # excluded positive -> past the end
        ]
    )
    ranks = metrics.positive_ranks(scores, np.array([0, 2, 3, 1]))
    assert ranks.tolist() == [0, 3, 1, 4]


def test_recall_ndcg_mrr_by_hand() -> None:
    ranks = np.array([0, 1, 9, 10, 50])
    assert metrics.recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert metrics.recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    expected_ndcg = (1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(11)) / 5
    assert metrics.ndcg_at_k(ranks, 10) == pytest.approx(expected_ndcg)
    assert metrics.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 51) / 5)
    assert metrics.recall_at_k(np.array([], dtype=np.int64)) == 0.0


def test_coverage_counts_distinct_items_over_the_catalogue() -> None:
    top = np.array([[1, 2, 3], [3, 2, 1], [4, 1, 0]])  # 0: fewer than k rankable items
    assert metrics.coverage_at_k(top, n_items=8) == pytest.approx(4 / 8)


def test_several_positives_per_row_by_hand() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1, 0.0],  # positives 0 and 2 -> ranks 0 and 2
            [0.1, 0.2, 0.3, 0.4, 0.5],  # positive 0 -> rank 4
            [0.5, -np.inf, 0.4, 0.3, 0.2],  # positives 1 (excluded) and 3 -> ranks 5 and 2
        ]
    )
    indptr = np.array([0, 2, 3, 5])
    ranks = metrics.positive_ranks_csr(scores, indptr, np.array([0, 2, 0, 1, 3]))
    assert ranks.tolist() == [0, 2, 4, 5, 2]
    k = 3
    ideal2 = 1 + 1 / math.log2(3)
    expected_ndcg = ((1 + 1 / math.log2(4)) / ideal2 + 0.0 + (1 / math.log2(4)) / ideal2) / 3
    assert metrics.ndcg_at_k(ranks, k, indptr) == pytest.approx(expected_ndcg)
    assert metrics.recall_at_k(ranks, k, indptr) == pytest.approx((2 / 2 + 0 + 1 / 2) / 3)
    assert metrics.mrr(ranks, indptr) == pytest.approx((1 + 1 / 5 + 1 / 3) / 3)
    # More positives than k: recall divides by k, and a perfect top k scores 1.
    many = np.array([0, 1, 2, 3])
    assert metrics.recall_at_k(many, 2, np.array([0, 4])) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(many, 2, np.array([0, 4])) == pytest.approx(1.0)


def test_ties_split_evenly_with_several_positives() -> None:
    scores = np.zeros((1, 9))
    ranks = metrics.positive_ranks_csr(scores, np.array([0, 2]), np.array([3, 7]))
    assert ranks.tolist() == [4, 4]  # 8 others tie with each: expected position 4


def test_top_k_returns_the_best_columns() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert set(metrics.top_k(scores, 2)[0].tolist()) == {1, 3}


def _catalog() -> Catalog:
    # item index: 1 "Red Moon" (x), 2 "Blue Moon" (x, y), 3 "Red Sun" (y), 4 "Green Field" (y)
    return Catalog.build(
        item_ids=["a", "b", "c", "d"],
        titles=["Red Moon", "Blue Moon", "Red Sun", "Green Field"],
        item_categories=[["x"], ["x", "y"], ["y"], ["y"]],
        maturity=[0, 0, 0, 0],
        release_year=[2020] * 4,
        popularity=[1.0, 5.0, 3.0, 10.0],
        user_ids=["u"],
    )


def _inputs(task: TaskType, query: str = "", anchor: str = "", category: str = "") -> Batch:
    encoder = FeatureEncoder(_catalog(), max_history=2, max_query_tokens=3)
    context = Context(task, user_id="u", query=query, anchor_item_id=anchor, category_id=category)
    inputs = encoder.batch([encoder.encode(context)], np.zeros((1, 1), dtype=np.int64))
    return Batch(inputs, _dataset(inputs, [[1]]), np.array([0]))


def _dataset(
    inputs: ModelInputs,
    positives: list[list[int]],
    excluded: list[list[int]] | None = None,
    timestamp_ms: list[int] | None = None,
) -> Dataset:
    n = len(inputs)
    excluded = excluded or [[] for _ in range(n)]
    return Dataset(
        inputs=inputs,
        timestamp_ms=np.array(timestamp_ms or [0] * n, dtype=np.int64),
        split=np.zeros(n, dtype=np.int8),
        positive_indptr=np.cumsum([0] + [len(p) for p in positives]),
        positive_items=np.array([x for p in positives for x in p], dtype=np.int64),
        excluded_indptr=np.cumsum([0] + [len(e) for e in excluded]),
        excluded_items=np.array([x for e in excluded for x in e], dtype=np.int64),
        exclude_seen=np.zeros(n, dtype=bool),
        history_start=np.zeros(n, dtype=np.int64),
        history_end=np.zeros(n, dtype=np.int64),
        play_items=np.zeros(0, dtype=np.int64),
        user=np.zeros(n, dtype=np.int64),
    )


def _order(scores: np.ndarray) -> list[str]:
    return [["a", "b", "c", "d"][j] for j in np.argsort(-scores[0], kind="stable")]


def test_popularity_order_breaks_ties_by_index() -> None:
    assert popularity_order(np.array([0.0, 2.0, 5.0, 2.0])).tolist() == [2, 1, 3]
    scores = PopularityScorer(_catalog())(_inputs(TaskType.NOTIFICATION))
    assert _order(scores) == ["d", "b", "c", "a"]


def test_task_aware_search_ranks_by_matched_tokens_then_popularity() -> None:
    scorer = TaskAwarePopularityScorer(_catalog(), _co_engagement())
    # "red moon": a matches both, then b and c match one (b more popular), then d.
    assert _order(scorer(_inputs(TaskType.SEARCH, query="red moon"))) == ["a", "b", "c", "d"]


def test_task_aware_category_puts_members_first() -> None:
    scorer = TaskAwarePopularityScorer(_catalog(), _co_engagement())
    assert _order(scorer(_inputs(TaskType.CATEGORY, category="x"))) == ["b", "a", "d", "c"]


def test_task_aware_related_ranks_by_co_engagement() -> None:
    scorer = TaskAwarePopularityScorer(_catalog(), _co_engagement())
    # Item a was co-engaged with c twice and with b once; d has none but is the most popular.
    assert _order(scorer(_inputs(TaskType.RELATED_ITEMS, anchor="a"))) == ["c", "b", "d", "a"]


def _co_engagement() -> CoEngagement:
    plays = EventTable.build(
        user=np.array([0, 0, 1, 1]),
        item=np.array([0, 2, 0, 2]),  # rows: a, c played together by two users
        timestamp_ms=np.array([1, 2, 3, 4]),
        event_type=EventType.PLAY,
    )
    related = EventTable.build(
        user=np.array([0, 0]),
        item=np.array([1, 3]),
        timestamp_ms=np.array([5, 100]),  # the click at 100 is after the cut-off: ignored
        event_type=EventType.RELATED_CLICK,
        anchor_item=np.array([0, 0]),
    )
    log = LogData(
        items=ItemTable(
            item_ids=["a", "b", "c", "d"],
            titles=["Red Moon", "Blue Moon", "Red Sun", "Green Field"],
            categories=[["x"], ["x", "y"], ["y"], ["y"]],
            maturity=np.zeros(4, dtype=np.int64),
            release_year=np.full(4, 2020, dtype=np.int64),
        ),
        user_ids=["u0", "u1"],
        category_ids=["x", "y"],
        events=EventTable.concat([plays, related]).sorted(),
        source="hand",
    )
    usable = log.events.timestamp_ms < 50
    co = CoEngagement.from_logs(log, usable, popularity=np.array([0.0, 1.0, 5.0, 3.0, 10.0]), window=1)
    neighbours, counts = co.row(1)
    assert neighbours.tolist() == [3, 2] and counts.tolist() == [2, 1]
    return co


def test_rank_rows_applies_exclusions() -> None:
    catalog = _catalog()
    batch = _inputs(TaskType.NOTIFICATION)
    two = ModelInputs(**{k: np.repeat(v, 2, axis=0) for k, v in batch.inputs.as_dict().items()})
    two.candidates = np.array([[2], [3]])  # positives: b, then c
    dataset = _dataset(two, [[2], [3]], excluded=[[4], []])  # row 0 excludes d, the most popular item
    ranked = rank_rows(PopularityScorer(catalog), dataset, np.array([0, 1]), k=2)
    assert ranked.ranks.tolist() == [0, 2]  # row 0: b is now first; row 1: d, b, then c
    assert set(ranked.top[0].tolist()) == {2, 3} and set(ranked.top[1].tolist()) == {4, 2}
    assert ranked.best[0] < ranked.best[1]  # row 0 lost its best item to the exclusion


def test_category_rows_rank_only_their_category() -> None:
    catalog = _catalog()
    encoder = FeatureEncoder(catalog, max_history=2, max_query_tokens=3)
    contexts = [Context(TaskType.CATEGORY, category_id="x"), Context(TaskType.NOTIFICATION)]
    inputs = encoder.batch([encoder.encode(c) for c in contexts], np.array([[1], [1]]))
    dataset = _dataset(inputs, [[1], [1]])
    ranked = rank_rows(PopularityScorer(catalog), dataset, np.array([0, 1]), CandidateSets(catalog), k=3)
    # Category x holds a and b: a ranks second of two, and the top list has no other item.
    assert ranked.ranks.tolist() == [1, 3]
    assert set(ranked.top[0].tolist()) == {2, 1, 0}


def test_new_release_rows_rank_only_what_is_new_at_their_time() -> None:
    catalog = Catalog.build(
        item_ids=["a", "b", "c", "d"],
        titles=["Red Moon", "Blue Moon", "Red Sun", "Green Field"],
        item_categories=[["x"], ["x", "y"], ["y"], ["y"]],
        maturity=[0, 0, 0, 0],
        release_year=[2019, 2014, 2021, 2020],
        popularity=[1.0, 5.0, 3.0, 10.0],
        user_ids=["u"],
    )
    encoder = FeatureEncoder(catalog, max_history=2, max_query_tokens=3)
    contexts = [Context(TaskType.NEW_RELEASES)] * 2 + [Context(TaskType.NOTIFICATION)]
    inputs = encoder.batch([encoder.encode(c) for c in contexts], np.array([[1], [1], [1]]))
    mid_2020, mid_2023 = 1_593_561_600_000, 1_688_169_600_000
    dataset = _dataset(inputs, [[1], [1], [1]], timestamp_ms=[mid_2020, mid_2023, mid_2020])
    ranked = rank_rows(PopularityScorer(catalog), dataset, np.array([0, 1, 2]), CandidateSets(catalog), k=4)
    # 2020: 2018-2020 are new (a, d; c is not out yet). 2023: the catalogue ends in 2021, so
    # 2019-2021 (a, c, d). The notification row ranks all four.
    assert ranked.ranks.tolist() == [1, 2, 3]
    assert [set(row[row > 0].tolist()) for row in ranked.top] == [{1, 4}, {1, 3, 4}, {1, 2, 3, 4}]
