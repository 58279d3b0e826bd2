"""Business rules: small named functions run before (pre) and after (post) the model.

Each rule is registered here once with the stage it belongs to and a pydantic model of its
parameters; profiles name rules and give parameters, validated at load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unirank.artifact.catalog import MATURITY_LEVELS
from unirank.server.domain import Candidates, RuleContext, in_sorted

Stage = Literal["pre", "post"]


class ConfiguredRule(Protocol):
    """A rule as a profile names it (``unirank.server.config.RuleConfig``; this module does not
    import config, which imports it to validate rules at load)."""

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(_Params):
    pass


class MaturityParams(_Params):
    max_level: Literal["all", "7+", "13+", "16+", "18+"]
    """Most restricted maturity rating allowed (see catalog.MATURITY_LEVELS)."""


class MaxPerCategoryParams(_Params):
    max: int = Field(ge=1)
    """Most items of one primary category in a response."""


class BoostRecentParams(_Params):
    min_year: int
    """Items released in or after this year get the boost."""
    boost: float = Field(0.5, ge=0.0)
    """Added to the model score before re-sorting."""


RuleFn = Callable[[Candidates, RuleContext, Any], Candidates]


@dataclass(frozen=True)
class RuleSpec:
    stage: Stage
    params: type[_Params]
    fn: RuleFn
    doc: str


def exclude_seen(c: Candidates, ctx: RuleContext, _: NoParams) -> Candidates:
    if not len(ctx.history_items):
        return c
    return c.keep(~in_sorted(c.items, np.sort(ctx.history_items)))


def exclude_anchor(c: Candidates, ctx: RuleContext, _: NoParams) -> Candidates:
    return c if ctx.anchor_item <= 0 else c.keep(c.items != ctx.anchor_item)


def maturity_ceiling(c: Candidates, ctx: RuleContext, p: MaturityParams) -> Candidates:
    return c.keep(ctx.maturity[c.items] <= MATURITY_LEVELS.index(p.max_level))


def _rank_in_group(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key (0: the key's first)."""
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    positions = np.arange(n)
    starts = np.empty(n, dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = positions - group_start
    return rank


def dedupe_titles(c: Candidates, ctx: RuleContext, _: NoParams) -> Candidates:
    first = np.unique(ctx.title_keys[c.items], return_index=True)[1]  # each title's first place
    keep = np.zeros(len(c), dtype=bool)
    keep[first] = True
    return c.keep(keep)


def max_per_category(c: Candidates, ctx: RuleContext, p: MaxPerCategoryParams) -> Candidates:
    return c.keep(_rank_in_group(ctx.primary_category[c.items]) < p.max)


def boost_recent_releases(c: Candidates, ctx: RuleContext, p: BoostRecentParams) -> Candidates:
    if c.scores is None:
        return c
    scores = c.scores + p.boost * (ctx.release_year[c.items] >= p.min_year).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return Candidates(c.items[order], c.sources[order], scores[order])


# The one place rules are registered.
RULES: dict[str, RuleSpec] = {
    "exclude_seen": RuleSpec("pre", NoParams, exclude_seen, "drop items in the request's history"),
    "exclude_anchor": RuleSpec("pre", NoParams, exclude_anchor, "drop the anchor item itself"),
    "maturity_ceiling": RuleSpec("pre", MaturityParams, maturity_ceiling, "drop items above a rating"),
    "dedupe_titles": RuleSpec("post", NoParams, dedupe_titles, "keep the best item per title"),
    "max_per_category": RuleSpec("post", MaxPerCategoryParams, max_per_category, "cap items per category"),
    "boost_recent_releases": RuleSpec(
        "post", BoostRecentParams, boost_recent_releases, "boost recent releases"
    ),
}


def validate_rule_configs(stage: str, rule: ConfiguredRule) -> list[str]:
    """Problems with one configured rule (empty when valid)."""
    spec = RULES.get(rule.name)
    if spec is None:
        return [f"unknown rule {rule.name!r}; known: {sorted(RULES)}"]
    if spec.stage != stage:
        return [f"rule {rule.name!r} runs in the {spec.stage!r} stage, not {stage!r}"]
    try:
        spec.params.model_validate(rule.params)
    except ValidationError as exc:
        return [f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return []


@dataclass(frozen=True)
class BoundRule:
    name: str
    fn: RuleFn
    params: _Params

    def __call__(self, candidates: Candidates, ctx: RuleContext) -> Candidates:
        return self.fn(candidates, ctx, self.params)


def bind_rules(configs: tuple[ConfiguredRule, ...]) -> tuple[BoundRule, ...]:
    """Configured rules ready to run (configs were validated at profile load)."""
    bound = []
    for config in configs:
        spec = RULES[config.name]
        bound.append(BoundRule(config.name, spec.fn, spec.params.model_validate(config.params)))
    return tuple(bound)
