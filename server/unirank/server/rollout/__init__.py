"""Canary rollouts: a new version judged, promoted or rolled back per use-case (docs/rollouts.md).

What lives here: :mod:`~unirank.server.rollout.judge` (the sequential CTR judge and its knobs),
:mod:`~unirank.server.rollout.guards` (operational guards per arm), :mod:`~unirank.server.rollout.state`
(the persisted state and the sticky user split), :mod:`~unirank.server.rollout.router` (what the
pipeline asks) and :mod:`~unirank.server.rollout.controller` (the wiring: routing, periodic looks,
decisions, operator commands). The judge imports numpy and the standard library only, so the
statistics can be tested and reasoned about without a server, a profile or a model.
"""

from __future__ import annotations

from unirank.server.rollout.judge import (
    ArmCounts,
    CanaryJudge,
    Decision,
    JudgeKnobs,
    JudgeState,
    Verdict,
)

__all__ = ["ArmCounts", "CanaryJudge", "Decision", "JudgeKnobs", "JudgeState", "Verdict"]
