"""Rollout statistics: the sequential judge that decides, per task, whether a canary may go on.

What lives here: :mod:`unirank.server.rollout.judge` (the knobs, the per-task judge and its decisions).
What it may import: numpy and the standard library only, no other unirank module, so the statistics
can be tested and reasoned about without a server, a profile or a model.
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
