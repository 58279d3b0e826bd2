"""The sample-ratio-mismatch check's unit: distinct users per arm.

The split is by user (a sticky hash of user and rollout id), so the users answered by each arm,
not their impressions, are the independent draws: a few heavy users make an arm's share of
impressions wander far more than a binomial allows, while the share of distinct users stays
binomial around the announced share. Counted per use-case since its share last changed (a user
keeps one arm while the share holds); anonymous requests count one each (their request id).
"""

from __future__ import annotations

from unirank.server.rollout.judge import UserSplit
from unirank.server.rollout.state import CANARY

MAX_USERS = 100_000
"""Distinct users tracked per use-case and step (about 7 MB); past it no new user is counted in
either arm, which keeps the counted ones a fair sample."""


class ArmUsers:
    """Per use-case, the distinct users each arm answered since its share last changed."""

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self._users: dict[str, tuple[set[int], set[int]]] = {}

    def saw(self, task: str, arm: str, user_key: str) -> None:
        canary, stable = self._users.setdefault(task, (set(), set()))
        key = hash(user_key)  # the process's own hash: never persisted, collisions negligible
        arm_users = canary if arm == CANARY else stable
        if key in arm_users or len(canary) + len(stable) < self.max_users:
            arm_users.add(key)

    def split(self, task: str, share: float) -> UserSplit:
        canary, stable = self._users.get(task, (set(), set()))
        return UserSplit(len(canary), len(stable), share)

    def reset(self, task: str | None = None) -> None:
        """Start counting again: for ``task`` when its share changes, for all when a rollout begins."""
        if task is None:
            self._users.clear()
        else:
            self._users.pop(task, None)
