"""Each business rule's effect, on hand-built candidates."""

from __future__ import annotations

import numpy as np
import pytest

from unirank.server.config import RuleConfig
from unirank.server.rules import RULES, Candidates, RuleContext, bind_rules, validate_rule_configs


@pytest.fixture
def ctx() -> RuleContext:
    # Items 0..6; 0 is padding. Titles of 3 and 4 are the same show.
    return RuleContext(
        history_items=np.array([2, 5]),
        anchor_item=1,
        maturity=np.array([0, 0, 1, 4, 2, 3, 0]),
        release_year=np.array([0, 1990, 2000, 2021, 2022, 1999, 2023]),
        primary_category=np.array([0, 1, 1, 2, 2, 1, 1]),
        title_keys=np.array([0, 10, 20, 30, 30, 50, 60]),
    )


def run(name: str, c: Candidates, ctx: RuleContext, **params: object) -> Candidates:
    (rule,) = bind_rules((RuleConfig(name=name, params=params),))
    return rule(c, ctx)


def cands(items: list[int], scores: list[float] | None = None) -> Candidates:
    return Candidates(
        np.array(items, dtype=np.int64),
        np.zeros(len(items), np.int8),
        None if scores is None else np.array(scores, np.float32),
    )


def test_exclude_seen_and_anchor(ctx: RuleContext) -> None:
    assert run("exclude_seen", cands([1, 2, 3, 5, 6]), ctx).items.tolist() == [1, 3, 6]
    assert run("exclude_anchor", cands([1, 2, 3]), ctx).items.tolist() == [2, 3]


def test_maturity_ceiling(ctx: RuleContext) -> None:
    assert run("maturity_ceiling", cands([1, 2, 3, 4, 5, 6]), ctx, max_level="13+").items.tolist() == [
        1,
        2,
        4,
        6,
    ]
    assert run("maturity_ceiling", cands([1, 2, 3]), ctx, max_level="all").items.tolist() == [1]


def test_dedupe_titles_keeps_the_best_ranked(ctx: RuleContext) -> None:
    assert run("dedupe_titles", cands([4, 1, 3, 6], [4, 3, 2, 1]), ctx).items.tolist() == [4, 1, 6]


def test_max_per_category_keeps_order(ctx: RuleContext) -> None:
    out = run("max_per_category", cands([1, 2, 3, 5, 4, 6], [6, 5, 4, 3, 2, 1]), ctx, max=2)
    assert out.items.tolist() == [1, 2, 3, 4]


def test_boost_recent_releases_reorders(ctx: RuleContext) -> None:
    out = run("boost_recent_releases", cands([1, 3, 6], [1.0, 0.9, 0.2]), ctx, min_year=2021, boost=0.5)
    assert out.items.tolist() == [3, 1, 6]
    assert out.scores is not None and out.scores[0] == pytest.approx(1.4)


def test_every_registered_rule_validates_its_params() -> None:
    for name, spec in RULES.items():
        wrong_stage = "post" if spec.stage == "pre" else "pre"
        assert validate_rule_configs(wrong_stage, RuleConfig(name=name))
    assert validate_rule_configs("pre", RuleConfig(name="maturity_ceiling", params={"max_level": "99"}))
    assert not validate_rule_configs("pre", RuleConfig(name="maturity_ceiling", params={"max_level": "7+"}))


def _kept_in_order(keys: list[int], limit: int) -> list[int]:
    """Reference for dedupe_titles (limit 1) and max_per_category: a Python loop over the ranking."""
    counts: dict[int, int] = {}
    kept = []
    for position, key in enumerate(keys):
        if counts.get(key, 0) < limit:
            kept.append(position)
            counts[key] = counts.get(key, 0) + 1
    return kept


@pytest.mark.parametrize("seed", range(20))
def test_dedupe_and_category_cap_match_a_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = 60
    title_keys = rng.integers(0, 12, n_items + 1)
    categories = rng.integers(0, 5, n_items + 1)
    context = RuleContext(
        history_items=np.zeros(0, np.int64),
        anchor_item=0,
        maturity=np.zeros(n_items + 1, np.int64),
        release_year=np.zeros(n_items + 1, np.int64),
        primary_category=categories,
        title_keys=title_keys,
    )
    ranking = rng.permutation(np.arange(1, n_items + 1))[: rng.integers(0, n_items)].tolist()
    deduped = run("dedupe_titles", cands(ranking), context).items.tolist()
    assert deduped == [ranking[i] for i in _kept_in_order(title_keys[ranking].tolist(), 1)]
    limit = int(rng.integers(1, 4))
    capped = run("max_per_category", cands(ranking), context, max=limit).items.tolist()
    assert capped == [ranking[i] for i in _kept_in_order(categories[ranking].tolist(), limit)]


def test_exclude_seen_with_repeated_and_unknown_history(ctx: RuleContext) -> None:
    repeated = RuleContext(**{**ctx.__dict__, "history_items": np.array([5, 5, 2, 6])})
    assert run("exclude_seen", cands([1, 2, 3, 5, 6, 4]), repeated).items.tolist() == [1, 3, 4]
