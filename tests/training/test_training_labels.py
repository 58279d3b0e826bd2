"""Labels, the merged dataset and the time split: one context schema, no leakage."""

from __future__ import annotations

import numpy as np
import pytest

from unirank.artifact import TASKS, FeatureEncoder, TaskType
from unirank.training.dataset import SPLITS, catalog_from_logs, label_event_times, temporal_split
from unirank.training.labels import LABEL_FUNCTIONS, Examples, PlayHistory, make_examples
from unirank.training.logs import EventTable, EventType, ItemTable, LogData
from unirank.training.pipeline import PreparedData, prepare_data
from unirank.training.synthetic import SyntheticConfig, generate

MAX_HISTORY = 5


@pytest.fixture(scope="module")
def log() -> LogData:
    return generate(SyntheticConfig.preset("tiny"), seed=1)


@pytest.fixture(scope="module")
def examples(log: LogData) -> Examples:
    return make_examples(log, MAX_HISTORY)


@pytest.fixture(scope="module")
def prepared(log: LogData) -> PreparedData:
    return prepare_data(log, max_history=MAX_HISTORY, max_query_tokens=4)


def _hand_log() -> LogData:
    """Two users; user 0 plays items 0, 1, 2 at t=10, 20, 30 and opens a notification at t=20."""
    plays = EventTable.build(
        user=np.array([0, 0, 0, 1]),
        item=np.array([0, 1, 2, 3]),
        timestamp_ms=np.array([10, 20, 30, 5]),
        event_type=EventType.PLAY,
    )
    opens = EventTable.build(
        user=np.array([0]),
        item=np.array([3]),
        timestamp_ms=np.array([20]),
        event_type=EventType.NOTIFICATION_OPEN,
    )
    items = ItemTable(
        item_ids=["a", "b", "c", "d"],
        titles=["Alpha", "Beta", "Gamma", "Delta"],
        categories=[["x"], ["x"], ["y"], ["y"]],
        maturity=np.zeros(4, dtype=np.int64),
        release_year=np.full(4, 2020, dtype=np.int64),
    )
    return LogData(
        items=items,
        user_ids=["u0", "u1"],
        category_ids=["x", "y"],
        events=EventTable.concat([plays, opens]).sorted(),
        source="hand",
    )


def test_registry_has_one_label_function_per_task() -> None:
    assert set(LABEL_FUNCTIONS) == {spec.name for spec in TASKS}


def test_unknown_task_label_function_is_rejected(log: LogData) -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        make_examples(log, MAX_HISTORY, {"podcasts": LABEL_FUNCTIONS["search"]})


def test_each_task_fills_only_its_own_fields(examples: Examples) -> None:
    seen = set()
    for task, context in zip(examples.task.tolist(), examples.contexts, strict=True):
        seen.add(task)
        assert context.task == task and context.user_id
        assert bool(context.anchor_item_id) == (task == TaskType.RELATED_ITEMS)
        assert bool(context.query) == (task == TaskType.SEARCH)
        assert bool(context.category_id) == (task == TaskType.CATEGORY)
    assert seen == {int(spec.task_type) for spec in TASKS}


def test_history_is_strictly_before_the_event(log: LogData, examples: Examples) -> None:
    """Checked against a brute-force scan of the raw plays, independent of PlayHistory."""
    plays = log.events_of(EventType.PLAY)
    by_user: dict[str, list[tuple[int, str]]] = {}
    for u, i, t in zip(plays.user.tolist(), plays.item.tolist(), plays.timestamp_ms.tolist(), strict=True):
        by_user.setdefault(log.user_ids[u], []).append((t, log.items.item_ids[i]))
    rows = np.random.default_rng(0).choice(len(examples), size=300, replace=False)
    for row in rows.tolist():
        context, t = examples.contexts[row], int(examples.timestamp_ms[row])
        before = [item for time, item in sorted(by_user.get(context.user_id, [])) if time < t]
        assert context.history_item_ids == tuple(before[-MAX_HISTORY:])


def test_a_play_at_the_event_time_is_not_history() -> None:
    hand = _hand_log()
    (example,) = make_examples(hand, MAX_HISTORY, {"notification": LABEL_FUNCTIONS["notification"]}).contexts
    assert example.history_item_ids == ("a",)  # "b" was played at t=20, the event's own time
    history = PlayHistory(hand)
    start, end = history.before(np.array([0, 0, 1]), np.array([10, 31, 6]))
    assert (end - start).tolist() == [0, 3, 1]


def test_notification_excludes_everything_played_before(examples: Examples) -> None:
    rows = np.flatnonzero(examples.task == TaskType.NOTIFICATION)
    assert len(rows)
    for row in rows[:200].tolist():
        excluded = set(examples.excluded_item_ids[row])
        assert set(examples.contexts[row].history_item_ids) <= excluded
        assert examples.positive_item_ids[row] not in excluded


def test_related_excludes_its_anchor(examples: Examples) -> None:
    rows = np.flatnonzero(examples.task == TaskType.RELATED_ITEMS)
    for row in rows.tolist():
        assert examples.excluded_item_ids[row] == (examples.contexts[row].anchor_item_id,)


def test_examples_are_merged_in_time_order(examples: Examples) -> None:
    assert (np.diff(examples.timestamp_ms) >= 0).all()


def test_temporal_split_orders_train_validation_test(prepared: PreparedData) -> None:
    dataset = prepared.dataset
    times = {split: dataset.timestamp_ms[dataset.rows(split)] for split in SPLITS}
    assert times["train"].max() < times["validation"].min()
    assert times["validation"].max() < times["test"].min()
    shares = np.array([len(times[s]) for s in SPLITS]) / len(dataset)
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.02)
    # Every task appears in every split, so each head is trained, tuned and tested.
    for task_counts in dataset.counts().values():
        assert all(n > 0 for n in task_counts.values())


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError):
        temporal_split(np.arange(10), (0.8, 0.2, 0.0))


def test_catalogue_statistics_come_from_the_training_window(log: LogData) -> None:
    split = temporal_split(label_event_times(log))
    catalog = catalog_from_logs(log, split.train_end_ms)
    past = log.events.timestamp_ms < split.train_end_ms
    expected = np.bincount(log.events.item[past], minlength=log.n_items)
    np.testing.assert_array_equal(np.asarray(catalog.popularity[1:]), expected)
    everything = np.bincount(log.events.item, minlength=log.n_items)
    assert not np.array_equal(expected, everything)  # later events really were left out
    # Query-only words seen in training get a vocabulary slot, so the encoder keeps them.
    assert "scary" in catalog.tokens or "creepy" in catalog.tokens


def test_dataset_rows_are_what_the_serving_encoder_produces(
    prepared: PreparedData, examples: Examples
) -> None:
    encoder = FeatureEncoder(prepared.catalog, max_history=MAX_HISTORY, max_query_tokens=4)
    dataset = prepared.dataset
    assert len(dataset) == len(examples)  # every positive is in the catalogue
    for row in np.random.default_rng(1).choice(len(examples), size=50, replace=False).tolist():
        encoded = encoder.encode(examples.contexts[row])
        assert dataset.task[row] == encoded.task
        assert dataset.inputs.user[row] == encoded.user
        np.testing.assert_array_equal(dataset.inputs.history[row], encoded.history)
        np.testing.assert_array_equal(dataset.inputs.query_tokens[row], encoded.query_tokens)
        assert dataset.inputs.anchor_item[row] == encoded.anchor_item
        assert dataset.inputs.category[row] == encoded.category
        assert dataset.positive[row] == prepared.catalog.items.index(examples.positive_item_ids[row])
        excluded = {prepared.catalog.items.index(x) for x in examples.excluded_item_ids[row]}
        assert set(dataset.excluded(row).tolist()) == excluded


def test_subset_keeps_rows_and_exclusions_aligned(prepared: PreparedData) -> None:
    dataset = prepared.dataset
    rows = dataset.rows("test", int(TaskType.NOTIFICATION))[::3]
    sub = dataset.subset(rows)
    assert len(sub) == len(rows)
    for i, row in enumerate(rows.tolist()):
        np.testing.assert_array_equal(sub.excluded(i), dataset.excluded(row))
        assert sub.positive[i] == dataset.positive[row]
