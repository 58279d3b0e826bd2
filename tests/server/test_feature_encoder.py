"""The shared feature encoder: the single-row path the server uses equals the general batch path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unirank.artifact import Catalog, Context, FeatureEncoder, TaskType


def _catalog() -> Catalog:
    return Catalog.build(
        item_ids=["a", "b", "c", "d"],
        titles=["Red Star", "Blue Moon", "Red Moon", "Green"],
        item_categories=[["x"], ["y"], ["x", "y"], []],
        maturity=[0, 0, 0, 0],
        release_year=[2000, 2001, 2002, 2003],
        popularity=[1.0, 2.0, 3.0, 4.0],
        user_ids=["u1", "u2"],
    )


def test_history_keeps_the_latest_known_items_left_aligned() -> None:
    encoder = FeatureEncoder(_catalog(), max_history=3, max_query_tokens=2)
    assert encoder.history_indices(["a", "zz", "b", "c", "d"]).tolist() == [2, 3, 4]
    assert encoder.history_indices(["zz", "b"]).tolist() == [2, 0, 0]
    assert encoder.history_indices([]).tolist() == [0, 0, 0]
    assert encoder.query_indices("").tolist() == [0, 0]
    assert encoder.query_indices("nope MOON red blue").tolist()[:2] == [
        encoder.catalog.tokens.index("moon"),
        encoder.catalog.tokens.index("red"),
    ]


def test_a_batch_of_one_equals_the_general_path() -> None:
    encoder = FeatureEncoder(_catalog(), max_history=4, max_query_tokens=3)
    contexts = [
        Context(TaskType.SEARCH, user_id="u1", history_item_ids=("b", "a"), query="red moon"),
        Context(TaskType.RELATED_ITEMS, anchor_item_id="c", category_id="y"),
    ]
    encoded = [encoder.encode(c) for c in contexts]
    candidates = np.array([[1, 2, 3], [4, 0, 2]], dtype=np.int64)
    both = encoder.batch(encoded, candidates)
    for row, one in enumerate(encoded):
        single = encoder.batch([one], candidates[row : row + 1])
        for name, values in single.as_dict().items():
            assert values.dtype == np.int64 and values.shape[0] == 1, name
            np.testing.assert_array_equal(values, both.as_dict()[name][row : row + 1], err_msg=name)


def test_time_features_take_one_time_per_row() -> None:
    """The offline gate re-scores log rows of different times in one batch: each row's candidates
    are read at its own time, as a batch of one at that time reads them."""
    from unirank.artifact.activity import ActivitySpec, ItemActivity

    day = 86_400_000.0
    activity = ItemActivity(
        ActivitySpec(),
        count=np.array([0.0, 5.0, 1.0, 2.0, 0.0]),
        last_ms=np.array([0.0, 10 * day, 20 * day, 30 * day, 0.0]),
        first_ms=np.array([0.0, day, 2 * day, 3 * day, 0.0]),
        release_ms=np.zeros(5),
    )
    encoder = FeatureEncoder(_catalog(), max_history=2, max_query_tokens=2, activity=activity)
    encoded = [encoder.encode(Context(TaskType.NOTIFICATION)) for _ in range(2)]
    candidates = np.array([[1, 2, 3], [1, 2, 3]], dtype=np.int64)
    times = np.array([40 * day, 400 * day])
    both = encoder.batch(encoded, candidates, times).candidate_time
    assert both is not None
    for row in range(2):
        alone = encoder.batch(encoded[row : row + 1], candidates[row : row + 1], float(times[row]))
        assert alone.candidate_time is not None
        np.testing.assert_allclose(both[row], alone.candidate_time[0])
    assert not np.allclose(both[0], both[1])  # the times differ, so do the features


def test_the_serving_state_gives_what_the_definition_gives(tmp_path: Path) -> None:
    """ItemActivity keeps "none" as infinities in one table (one gather, no NaN pass per request);
    its features equal time_features' on the NaN form, for items with and without events and
    release years, the padding item and events folded in later; the NaN form survives a save."""
    from unirank.artifact.activity import ActivitySpec, ItemActivity, time_features

    rng = np.random.default_rng(3)
    n, day = 400, 86_400_000.0
    last = 1.5e12 + rng.random(n) * 300 * day
    count = rng.random(n) * 40
    first = last - rng.random(n) * 900 * day
    release = np.where(rng.random(n) < 0.4, np.nan, 1.3e12 + rng.random(n) * 200 * day)
    none = rng.random(n) < 0.2
    last[none], first[none], count[none] = np.nan, np.nan, 0.0
    activity = ItemActivity(ActivitySpec(), count, last, first, release)
    activity.record(np.array([5, 5, 7, 0, n + 3]), np.array([1.6e12, 1.6e12 + day, 1.55e12, 1.6e12, 1.6e12]))
    candidates = rng.integers(0, n, (3, 90))
    candidates[:, :2] = 0
    at = np.array([1.52e12, 1.58e12, 1.7e12])
    expected = time_features(
        activity.count[candidates],
        activity.last_ms[candidates],
        activity.first_ms[candidates],
        activity.release_ms[candidates],
        at[:, None],
        activity.spec,
    )
    expected[candidates == 0] = 0.0
    np.testing.assert_array_equal(activity.features(candidates, at), expected)
    assert activity.count[5] > 1.0 and np.isnan(activity.last_ms[np.flatnonzero(none)[0]])
    activity.save(tmp_path / "activity.npz")
    again = ItemActivity.load(tmp_path / "activity.npz")
    np.testing.assert_array_equal(again.features(candidates, at), expected)
    assert again.newest_ms == activity.newest_ms == 1.6e12 + day
