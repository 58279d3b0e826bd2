"""A use-case's profile section made executable: bound rules, its cache, what it depends on."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from unirank.server.cache import TTLCache
from unirank.server.config import TaskConfig
from unirank.server.domain import RankResponse
from unirank.server.rules import BoundRule


@dataclass
class TaskRuntime:
    """A use-case's configuration made executable."""

    name: str
    head_index: int
    config: TaskConfig
    pre_rules: tuple[BoundRule, ...]
    post_rules: tuple[BoundRule, ...]
    cache: TTLCache[RankResponse] | None

    @functools.cached_property
    def uses_release_window(self) -> bool:
        """Retrieval or fallback depends on the request's new-release window (its time)."""
        return self.config.fallback.strategy == "popular_new_releases" or any(
            source.source == "new_releases" for source in self.config.retrieval.sources
        )

    def max_results(self, requested: int) -> int:
        """Items an answer holds: what the request asked for, else the use-case's default."""
        return requested or self.config.default_max_results
