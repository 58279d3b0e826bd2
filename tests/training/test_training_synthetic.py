"""The synthetic generator: deterministic per seed, valid canonical logs, the structure tasks rely on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unirank.artifact.text import tokenize
from unirank.training.logs import NONE, EventType, LogData
from unirank.training.synthetic import GENRES, SyntheticConfig, generate

TINY = SyntheticConfig.preset("tiny")


@pytest.fixture(scope="module")
def log() -> LogData:
    return generate(TINY, seed=3)


def _columns(log: LogData) -> dict[str, object]:
    events = log.events
    return {
        "user": events.user,
        "item": events.item,
        "timestamp_ms": events.timestamp_ms,
        "event_type": events.event_type,
        "anchor_item": events.anchor_item,
        "category": events.category,
        "query": events.query,
        "titles": log.items.titles,
        "categories": log.items.categories,
        "maturity": log.items.maturity,
        "release_year": log.items.release_year,
    }


def test_same_seed_same_logs(log: LogData) -> None:
    again = generate(TINY, seed=3)
    for name, value in _columns(log).items():
        other = _columns(again)[name]
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, other, err_msg=name)
        else:
            assert value == other, name


def test_other_seed_other_logs(log: LogData) -> None:
    other = generate(TINY, seed=4)
    assert other.items.titles != log.items.titles
    assert len(other.events) != len(log.events) or not np.array_equal(other.events.item, log.events.item)


def test_sizes_follow_the_config() -> None:
    config = dataclasses.replace(TINY, n_items=123, n_users=45, n_genres=12)
    log = generate(config, seed=0)
    assert log.n_items == 123 and log.n_users == 45 and len(log.category_ids) == 12
    assert {c for cats in log.items.categories for c in cats} <= set(log.category_ids)
    assert all(1 <= len(cats) <= 3 for cats in log.items.categories)


def test_every_event_type_is_logged_and_sorted(log: LogData) -> None:
    counts = np.bincount(log.events.event_type, minlength=len(EventType))
    assert (counts > 0).all(), counts
    assert (np.diff(log.events.timestamp_ms) >= 0).all()
    log.validate()  # optional columns set exactly where their event type needs them


def test_validate_rejects_broken_references(log: LogData) -> None:
    events = log.events.take(np.arange(len(log.events)))
    events.item = events.item.copy()
    events.item[0] = log.n_items  # one past the last item row
    broken = dataclasses.replace(log, events=events)
    with pytest.raises(ValueError, match=r"events\.item"):
        broken.validate()
    events = log.events.take(np.arange(len(log.events)))
    events.anchor_item = events.anchor_item.copy()
    events.anchor_item[np.flatnonzero(events.event_type == EventType.PLAY)[0]] = 0
    with pytest.raises(ValueError, match="anchor_item"):
        dataclasses.replace(log, events=events).validate()


def test_notification_opens_are_about_unseen_items(log: LogData) -> None:
    events = log.events
    first_play: dict[tuple[int, int], int] = {}
    for u, i, t, kind in zip(events.user, events.item, events.timestamp_ms, events.event_type, strict=True):
        if kind == EventType.PLAY:
            first_play.setdefault((int(u), int(i)), int(t))
    opens = np.flatnonzero(events.event_type == EventType.NOTIFICATION_OPEN)
    assert len(opens)
    for row in opens.tolist():
        key = (int(events.user[row]), int(events.item[row]))
        assert first_play.get(key, np.iinfo(np.int64).max) >= events.timestamp_ms[row]


def test_related_anchor_is_not_the_clicked_item(log: LogData) -> None:
    related = log.events_of(EventType.RELATED_CLICK)
    assert (related.anchor_item != NONE).all()
    assert (related.anchor_item != related.item).all()


def test_popularity_is_heavy_tailed(log: LogData) -> None:
    plays = log.events_of(EventType.PLAY)
    counts = np.sort(np.bincount(plays.item, minlength=log.n_items))[::-1]
    top_decile = counts[: log.n_items // 10].sum() / counts.sum()
    assert top_decile > 0.3, top_decile


def test_some_queries_match_no_title(log: LogData) -> None:
    """Lexical lookup alone cannot answer every search: descriptor queries share no title word."""
    title_words = {w for title in log.items.titles for w in tokenize(title)}
    searches = log.events_of(EventType.SEARCH_CLICK)
    no_match = [q for q in searches.query if not set(tokenize(q)) & title_words]
    assert 0.1 < len(no_match) / len(searches) < 0.6
    # ...and the clicked item's genre is what such a query is about.
    assert all(q for q in searches.query)


def test_category_clicks_stay_in_their_category(log: LogData) -> None:
    clicks = log.events_of(EventType.CATEGORY_CLICK)
    for item, category in zip(clicks.item.tolist(), clicks.category.tolist(), strict=True):
        assert log.category_ids[category] in log.items.categories[item]


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown synthetic size"):
        SyntheticConfig.preset("huge")


def test_sparse_shape_is_a_listening_history_unlike_the_default() -> None:
    config = dataclasses.replace(SyntheticConfig.preset("sparse"), n_items=2000, n_users=220)
    log = generate(config, 0)
    assert set(np.unique(log.events.event_type).tolist()) == {int(EventType.PLAY)}  # no surface events
    assert np.all(log.events.timestamp_ms % 86_400_000 == 0) and np.all(
        log.texts.timestamp_ms % 86_400_000 == 0
    )
    assert not np.any(log.items.release_year)  # so no new releases
    assert len(log.texts) > 0 and set(log.texts.text) <= {
        word for genre in log.category_ids for word in (genre, *GENRES[genre][1])
    }
    # titles are names that say nothing about the content: no genre word in any of them
    genre_words = {w for genre in log.category_ids for w in GENRES[genre][0]}
    assert not genre_words & {w for title in log.items.titles for w in tokenize(title)}
    assert np.all(log.events.weight >= 1) and len(np.unique(log.events.weight)) > 3  # play counts
    assert 6000 < len(log.events) < 10_000  # ~36 plays per user, ~4 per item: sparse


def test_sparse_preset_has_the_music_data_shape() -> None:
    config = SyntheticConfig.preset("sparse")
    assert (config.n_items, config.n_users, config.plays_per_user) == (10_000, 1_100, 36.0)
