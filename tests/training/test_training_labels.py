"""Labels, the merged dataset and the per-user time split: one context schema, no leakage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from unirank.artifact import TASKS, FeatureEncoder, TaskType
from unirank.training.dataset import SPLITS, catalog_from_logs
from unirank.training.examples import TEST, TRAIN, VALIDATION, Examples, PlayHistory, UserSplit
from unirank.training.label_rows import LabelConfig
from unirank.training.labels import LABEL_FUNCTIONS, make_examples
from unirank.training.logs import EventTable, EventType, ItemTable, LogData, TextTable
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


# One user rates ten movies, one a minute; a second user rates the same movies in reverse.
TITLES = [
    "Star Wars",
    "Star Trek",
    "Love Actually",
    "Love Story",
    "Heat",
    "Night Heat",
    "Alien",
    "Aliens",
    "Toy Story",
    "Star Dust",
]
GENRES = [
    ["scifi"],
    ["scifi"],
    ["romance"],
    ["romance", "drama"],
    ["crime"],
    ["crime"],
    ["scifi"],
    ["scifi"],
    ["kids"],
    ["scifi", "romance"],
]


def _rated_log(ratings: list[float] | None = None) -> LogData:
    ratings = ratings or [5, 4, 2, 5, 5, 4, 1, 5, 4, 5]
    n = len(TITLES)
    users = np.repeat([0, 1], n)
    items = np.r_[np.arange(n), np.arange(n)[::-1]]
    times = np.r_[np.arange(n), np.arange(n)] * 60_000 + 1_000_000
    plays = EventTable.build(
        user=users,
        item=items,
        timestamp_ms=times,
        event_type=EventType.PLAY,
        rating=np.r_[ratings, ratings[::-1]].astype(np.float64),
    )
    texts = TextTable(
        user=np.array([0, 0, 1]),
        item=np.array([6, 8, 8]),
        text=["space horror", "pixar", "pixar"],
        timestamp_ms=np.array([1_000_000 + 6 * 60_000, 1_000_000 + 9 * 60_000, 1_000_000 + 2 * 60_000]),
    )
    return LogData(
        items=ItemTable(
            item_ids=[f"m{i}" for i in range(n)],
            titles=TITLES,
            categories=GENRES,
            maturity=np.zeros(n, dtype=np.int64),
            release_year=np.zeros(n, dtype=np.int64),
        ),
        user_ids=["u0", "u1"],
        category_ids=sorted({g for gs in GENRES for g in gs}),
        events=plays.sorted(),
        source="hand",
        texts=texts,
    )


def _rows(examples: Examples, task: TaskType, split: int | None = None) -> list[int]:
    mask = examples.task == task
    if split is not None:
        mask &= examples.split == split
    return np.flatnonzero(mask).tolist()


def test_registry_has_one_label_function_per_task() -> None:
    assert set(LABEL_FUNCTIONS) == {spec.name for spec in TASKS}


def test_unknown_task_label_function_is_rejected(log: LogData) -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        make_examples(log, MAX_HISTORY, label_functions={"podcasts": LABEL_FUNCTIONS["search"]})


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
    only = {"notification": LABEL_FUNCTIONS["notification"]}
    (example,) = make_examples(hand, MAX_HISTORY, label_functions=only).contexts
    assert example.history_item_ids == ("a",)  # "b" was played at t=20, the event's own time
    history = PlayHistory(hand)
    start, end = history.before(np.array([0, 0, 1]), np.array([10, 31, 6]))
    assert (end - start).tolist() == [0, 3, 1]


def test_logged_notifications_exclude_everything_played_before(examples: Examples) -> None:
    rows = _rows(examples, TaskType.NOTIFICATION)
    assert rows and examples.exclude_seen[rows].all()
    for row in rows[:200]:
        assert len(examples.positives(row)) == 1


def test_related_excludes_its_anchor(examples: Examples, log: LogData) -> None:
    for row in _rows(examples, TaskType.RELATED_ITEMS):
        (anchor,) = examples.excluded(row).tolist()
        assert log.items.item_ids[anchor] == examples.contexts[row].anchor_item_id


def test_examples_are_merged_in_time_order(examples: Examples) -> None:
    assert (np.diff(examples.timestamp_ms) >= 0).all()


def test_user_split_cuts_each_timeline_by_time() -> None:
    log = _rated_log()
    split = UserSplit.from_logs(log, (0.7, 0.1, 0.2))
    assigned = split.assign(log.events.user, log.events.timestamp_ms)
    for user in (0, 1):
        mine = assigned[log.events.user == user]
        assert mine.tolist() == [TRAIN] * 7 + [VALIDATION] + [TEST] * 2  # events are in time order
    with pytest.raises(ValueError):
        UserSplit.from_logs(log, (0.8, 0.2, 0.0))


def test_every_split_of_the_synthetic_data_has_every_task(prepared: PreparedData) -> None:
    dataset = prepared.dataset
    shares = np.array([len(dataset.rows(s)) for s in SPLITS]) / len(dataset)
    assert shares[0] > 0.5 and shares[1] > 0.1 and shares[2] > 0.1
    for task_counts in dataset.counts().values():
        assert all(n > 0 for n in task_counts.values())


def test_derived_notification_rows() -> None:
    log = _rated_log()
    split = UserSplit.from_logs(log, (0.7, 0.1, 0.2))
    examples = make_examples(log, 3, split, config=LabelConfig(future_window=3))
    item = {f"m{i}": i for i in range(10)}
    train = _rows(examples, TaskType.NOTIFICATION, TRAIN)
    # user 0: rows at positions 1..6 (position 0 has no history); positives: the next 3 train plays
    first = next(r for r in train if examples.contexts[r].user_id == "u0")
    assert examples.contexts[first].history_item_ids == ("m0",)
    assert examples.positives(first).tolist() == [1, 2, 3]
    last = [r for r in train if examples.contexts[r].user_id == "u0"][-1]
    assert examples.positives(last).tolist() == [6]  # the window never crosses into validation
    (test_row,) = [
        r for r in _rows(examples, TaskType.NOTIFICATION, TEST) if examples.contexts[r].user_id == "u0"
    ]
    assert examples.positives(test_row).tolist() == [8, 9]  # the whole test window
    assert [item[x] for x in examples.contexts[test_row].history_item_ids] == [5, 6, 7]
    assert examples.exclude_seen[test_row]


def test_derived_related_rows_pair_consecutive_liked_items() -> None:
    log = _rated_log()
    examples = make_examples(log, 3)
    pairs = sorted(
        (examples.contexts[r].user_id, examples.contexts[r].anchor_item_id, int(examples.positives(r)[0]))
        for r in _rows(examples, TaskType.RELATED_ITEMS)
    )
    liked = [0, 1, 3, 4, 5, 7, 8, 9]  # rated >= 4 (items 2 and 6 are not)
    expected_u0 = [("u0", f"m{a}", b) for a, b in itertools.pairwise(liked)]
    assert [p for p in pairs if p[0] == "u0"] == expected_u0
    gap = make_examples(log, 3, config=LabelConfig(related_max_gap_s=30))  # plays are a minute apart
    assert not _rows(gap, TaskType.RELATED_ITEMS)


def test_derived_search_rows_use_texts_and_shared_title_words() -> None:
    log = _rated_log()
    examples = make_examples(log, 3, config=LabelConfig(search_title_share=1.0))
    queries = {
        (examples.contexts[r].query, int(examples.positives(r)[0])) for r in _rows(examples, TaskType.SEARCH)
    }
    assert ("space horror", 6) in queries and ("pixar", 8) in queries
    for query, item in queries - {("space horror", 6), ("pixar", 8)}:
        words = query.split()
        title = TITLES[item].lower().split()
        assert set(words) <= set(title) and words != title  # never the whole title
        others = [t for i, t in enumerate(TITLES) if i != item and set(words) & set(t.lower().split())]
        assert others  # another title shares the words: lookup alone cannot decide
    assert all(
        item not in (4, 6, 7) for _, item in queries - {("space horror", 6)}
    )  # "heat", "alien(s)": unique


def test_derived_category_rows() -> None:
    log = _rated_log()
    examples = make_examples(log, 3, config=LabelConfig(future_window=10))
    scifi = log.category_ids.index("scifi")
    for r in _rows(examples, TaskType.CATEGORY):
        members = {i for i, g in enumerate(GENRES) if log.category_ids[scifi] in g}
        if examples.contexts[r].category_id == "scifi":
            assert set(examples.positives(r).tolist()) <= members
    tests = [r for r in _rows(examples, TaskType.CATEGORY, TEST) if examples.contexts[r].user_id == "u0"]
    got = {examples.contexts[r].category_id: examples.positives(r).tolist() for r in tests}
    assert got == {"kids": [8], "scifi": [9], "romance": [9]}


def test_catalogue_statistics_come_from_the_training_split(log: LogData, prepared: PreparedData) -> None:
    catalog = catalog_from_logs(log, prepared.split)
    train = prepared.split.assign(log.events.user, log.events.timestamp_ms) == TRAIN
    expected = np.bincount(log.events.item[train], minlength=log.n_items)
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
        assert dataset.positives(row).tolist() == (examples.positives(row) + 1).tolist()
        excluded = set((examples.excluded(row) + 1).tolist())
        if examples.exclude_seen[row]:
            excluded |= set(dataset.history(row).tolist())
        assert set(dataset.excluded(row).tolist()) == excluded


def test_full_history_extends_the_capped_input(prepared: PreparedData) -> None:
    dataset = prepared.dataset
    for row in dataset.rows("test")[:100].tolist():
        capped = dataset.inputs.history[row]
        full = dataset.history(row)
        assert full[-MAX_HISTORY:].tolist() == capped[capped > 0].tolist()


def test_subset_keeps_rows_and_lists_aligned(prepared: PreparedData) -> None:
    dataset = prepared.dataset
    rows = dataset.rows("test", int(TaskType.NOTIFICATION))[::3]
    sub = dataset.subset(rows)
    assert len(sub) == len(rows)
    for i, row in enumerate(rows.tolist()):
        np.testing.assert_array_equal(sub.excluded(i), dataset.excluded(row))
        np.testing.assert_array_equal(sub.positives(i), dataset.positives(row))


def test_evaluation_rows_are_capped_per_user_but_training_rows_are_not() -> None:
    log = _rated_log()
    capped = make_examples(log, 3, config=LabelConfig(max_evaluation_rows_per_user=1, search_title_share=1.0))
    full = make_examples(log, 3, config=LabelConfig(max_evaluation_rows_per_user=0, search_title_share=1.0))
    for task in (TaskType.RELATED_ITEMS, TaskType.SEARCH, TaskType.CATEGORY):
        assert len(_rows(capped, task, TRAIN)) == len(_rows(full, task, TRAIN))
        for split in (VALIDATION, TEST):
            users = [capped.contexts[r].user_id for r in _rows(capped, task, split)]
            assert len(users) == len(set(users))  # at most one row per user
            assert len(_rows(full, task, split)) >= len(users)
    assert len(_rows(full, TaskType.CATEGORY, TEST)) > len(_rows(capped, TaskType.CATEGORY, TEST))


def test_training_rows_can_be_capped_per_task() -> None:
    log = _rated_log()
    capped = make_examples(log, 3, config=LabelConfig(max_train_rows_per_task=3, search_title_share=1.0))
    full = make_examples(log, 3, config=LabelConfig(search_title_share=1.0))
    for task in (TaskType.NOTIFICATION, TaskType.RELATED_ITEMS, TaskType.SEARCH, TaskType.CATEGORY):
        assert len(_rows(capped, task, TRAIN)) <= 3 + sum(  # texts are not derived rows
            1
            for r in _rows(full, task, TRAIN)
            if task == TaskType.SEARCH and full.contexts[r].query == "pixar"
        )
        assert len(_rows(capped, task, TEST)) == len(_rows(full, task, TEST))


YEAR_2019_MS, YEAR_2020_MS, YEAR_2021_MS = 1_546_300_800_000, 1_577_836_800_000, 1_609_459_200_000  # 1 Jan


def _release_log() -> LogData:
    """One user rates m0..m9, one a minute: m0-m5 in 2019, m6 in 2020, m7-m9 in 2021 (the newest
    release year)."""
    ratings = [5, 5, 2, 5, 5, 4, 5, 5, 4, 5]
    years = [2019, 2010, 2018, 2017, 2016, 2019, 2020, 2021, 2019, 2018]
    times = [YEAR_2019_MS + i * 60_000 for i in range(6)] + [YEAR_2020_MS]
    times += [YEAR_2021_MS + i * 60_000 for i in range(3)]
    plays = EventTable.build(
        user=np.zeros(10, dtype=np.int64),
        item=np.arange(10),
        timestamp_ms=np.array(times),
        event_type=EventType.PLAY,
        rating=np.array(ratings, dtype=np.float64),
    )
    return LogData(
        items=ItemTable(
            item_ids=[f"m{i}" for i in range(10)],
            titles=TITLES,
            categories=GENRES,
            maturity=np.zeros(10, dtype=np.int64),
            release_year=np.array(years, dtype=np.int64),
        ),
        user_ids=["u0"],
        category_ids=sorted({g for gs in GENRES for g in gs}),
        events=plays,
        source="hand",
    )


def test_derived_new_release_rows() -> None:
    log = _release_log()
    split = UserSplit.from_logs(log, (0.7, 0.1, 0.2))  # m0-m6 train, m7 validation, m8-m9 test
    only = {"new_releases": LABEL_FUNCTIONS["new_releases"]}
    examples = make_examples(log, 3, split, label_functions=only)
    got = {
        SPLITS[int(examples.split[r])]: (
            examples.contexts[r].history_item_ids,
            examples.positives(r).tolist(),
        )
        for r in range(len(examples))
        if examples.split[r] != TRAIN
    }
    # At 2021 the window is 2019-2021: m7 (2021) and m8 (2019) are new, m9 (2018) is not.
    assert got == {"validation": (("m4", "m5", "m6"), [7]), "test": (("m5", "m6", "m7"), [8])}
    train = [
        (examples.contexts[r].history_item_ids, examples.positives(r).tolist())
        for r in _rows(examples, TaskType.NEW_RELEASES, TRAIN)
    ]
    # In 2019 the window is 2017-2019: liked and new are m0, m3, m5 (m2 is disliked, m1 and m4 are
    # older; m6, liked in 2020, is not out yet in 2019). m0 has no history, so rows start at m3.
    assert train == [(("m0", "m1", "m2"), [3, 5]), (("m2", "m3", "m4"), [5]), (("m3", "m4", "m5"), [6])]
    assert examples.exclude_seen.all() and (examples.task == TaskType.NEW_RELEASES).all()


def test_new_release_positives_are_new_unseen_and_in_the_rows_future(
    log: LogData, examples: Examples
) -> None:
    """Every positive is new at its row's time, a first engagement after it, in the row's split."""
    from unirank.artifact.catalog import is_new_release

    plays = log.events_of(EventType.PLAY)
    split = UserSplit.from_logs(log)
    years, newest = log.items.release_year, int(log.items.release_year.max())
    rows = _rows(examples, TaskType.NEW_RELEASES)
    assert len(rows) > 100
    for row in rows:
        positives = examples.positives(row)
        time, user = int(examples.timestamp_ms[row]), int(examples.user[row])
        assert len(positives) and is_new_release(years[positives], time, newest).all()
        mine = plays.user == user
        before = set(plays.item[mine & (plays.timestamp_ms < time)].tolist())
        assert not before & set(positives.tolist())  # never something the user had played
        for item in positives.tolist():  # each was played at or after the row's time, in its split
            when = plays.timestamp_ms[mine & (plays.item == item)]
            assert (when >= time).any()
            assert int(examples.split[row]) in split.assign(np.full(len(when), user), when).tolist()
    assert not is_new_release(years, int(examples.timestamp_ms[rows[0]]), newest).all()  # a real filter
