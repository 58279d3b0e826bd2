"""Operational guards of a canary: per use-case and arm, server-side errors, fallbacks and latency,
and the check that the canary is not operationally worse than stable."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from unirank.server.config import RolloutGuards

LATENCY_WINDOW = 2048
"""Most recent answer durations kept per arm for its p99."""


@dataclass
class ArmOps:
    """Outcomes of one arm of one use-case since this process started."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def answered(self, fallback: bool, seconds: float) -> None:
        self.requests += 1
        self.fallbacks += fallback
        self.latencies_s.append(seconds)

    def failed(self) -> None:
        self.requests += 1
        self.errors += 1

    def p99_ms(self) -> float:
        return (
            float(np.percentile(np.fromiter(self.latencies_s, float), 99)) * 1000 if self.latencies_s else 0.0
        )


def guard_breach(canary: ArmOps, stable: ArmOps, limits: RolloutGuards) -> str | None:
    """Why the canary is operationally worse than stable, or None (also while either arm has too few
    answers to tell)."""
    if min(canary.requests, stable.requests) < limits.min_requests:
        return None
    for what, mine, theirs, allowed in (
        ("error rate", canary.errors, stable.errors, limits.max_error_rate_increase),
        ("fallback rate", canary.fallbacks, stable.fallbacks, limits.max_fallback_rate_increase),
    ):
        rate, base = mine / canary.requests, theirs / stable.requests
        if rate > base + allowed:
            return f"guard: canary {what} {rate:.1%} exceeds stable's {base:.1%} by more than {allowed:.1%}"
    p99, base_p99 = canary.p99_ms(), stable.p99_ms()
    bound = base_p99 * limits.max_p99_ratio + limits.p99_slack_ms
    if p99 > bound:
        return f"guard: canary p99 {p99:.1f} ms exceeds {bound:.1f} ms (stable p99 {base_p99:.1f} ms)"
    return None
