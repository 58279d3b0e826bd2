"""The offline promotion gate: a new version serves only if, on every use-case this profile serves,
its offline metric is no worse than the serving version's (issue 16, part 1).

Each served task is judged by its ``[tasks.NAME.gate]`` rule on the per-task test metrics the
artifacts carry (``metrics.json``). A version is refused when a served task is missing from its
metrics, was evaluated on too few rows, falls below the rule's floor, drops by more than the rule
allows, or gains implausibly much (likely a leak between training and test) unless allowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unirank.artifact import Artifact, ArtifactError
from unirank.server.config import GateRule, GateSection, Profile
from unirank.server.validation import Rescored, ValidationLogError, read_rows, rescore_tasks

if TYPE_CHECKING:
    from unirank.server.runtime import ModelRuntime
    from unirank.server.telemetry import Telemetry

log = logging.getLogger(__name__)


METRICS = "metrics"
VALIDATION_LOG = "validation_log"


@dataclass(frozen=True)
class GateRow:
    """The verdict on one served use-case."""

    task: str
    metric: str
    serving: float | None
    candidate: float | None
    rows: int
    passed: bool
    reason: str
    source: str = METRICS
    """Where the values come from: ``metrics`` (each artifact's metrics.json) or ``validation_log``."""

    @property
    def relative_change(self) -> float | None:
        """(candidate - serving) / serving; None where either is missing or serving is not positive."""
        if self.candidate is None or self.serving is None or self.serving <= 0:
            return None
        return (self.candidate - self.serving) / self.serving


@dataclass(frozen=True)
class GateDecision:
    """Every served use-case's verdict; the version passes only if all of them do."""

    version: str
    rows: tuple[GateRow, ...]
    serving_version: str = ""
    decided_unix_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def accepted(self) -> bool:
        return all(row.passed for row in self.rows)

    def table(self) -> str:
        """One line per use-case, for the log."""
        lines = []
        for row in self.rows:
            before = "-" if row.serving is None else f"{row.serving:.4f}"
            after = "-" if row.candidate is None else f"{row.candidate:.4f}"
            verdict = "pass" if row.passed else "REFUSE"
            lines.append(
                f"  {row.task} {row.metric}: {before} -> {after} ({row.rows} rows) {verdict}: {row.reason}"
            )
        return "\n".join(lines)

    def refusals(self) -> str:
        return "; ".join(f"{row.task}: {row.reason}" for row in self.rows if not row.passed)


def _metric(metrics: Mapping[str, Any], task: str, name: str) -> float | None:
    value = metrics.get("tasks", {}).get(task, {}).get("model", {}).get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rows(metrics: Mapping[str, Any], task: str) -> int:
    rows = metrics.get("evaluation", {}).get("rows", {}).get(task, 0)
    return int(rows) if isinstance(rows, int) and not isinstance(rows, bool) else 0


def judge(
    serving: Artifact,
    candidate: Artifact,
    rules: Mapping[str, GateRule],
    serving_per_task: Mapping[str, Artifact] | None = None,
    rescored: Mapping[str, Rescored] | None = None,
) -> GateDecision:
    """The gate's verdict on ``candidate`` replacing ``serving``, for the served tasks ``rules``;
    a task in ``serving_per_task`` (pinned to another version by a rollout) is compared with that.
    A task in ``rescored`` is judged on those values (both versions on one validation log), the
    others on each artifact's metrics."""
    rows = []
    for task, rule in sorted(rules.items()):
        if rescored is not None and task in rescored:
            before, after, count = rescored[task]
            source = VALIDATION_LOG
        else:
            before = _metric((serving_per_task or {}).get(task, serving).metrics, task, rule.metric)
            after = _metric(candidate.metrics, task, rule.metric)
            count, source = _rows(candidate.metrics, task), METRICS
        verdict = _verdict(rule, before, after, count, source)
        rows.append(GateRow(task, rule.metric, before, after, count, *verdict, source))
    return GateDecision(candidate.model_version, tuple(rows), serving.model_version)


def _verdict(
    rule: GateRule, before: float | None, after: float | None, count: int, source: str
) -> tuple[bool, str]:
    if after is None:
        if source == VALIDATION_LOG:
            return False, "the new version has no trained head for it"
        return False, f"no offline {rule.metric} for it in the new version's metrics"
    if count < rule.min_rows:
        return False, f"evaluated on {count} rows, fewer than min_rows {rule.min_rows}"
    if after < rule.min_value:
        return False, f"{after:.4f} is below min_value {rule.min_value:g}"
    if before is None or before <= 0:
        return True, "no serving value to compare with"
    change = (after - before) / before  # GateRow.relative_change
    if change < -rule.max_relative_drop:
        return False, f"drops {-change:.1%}, more than max_relative_drop {rule.max_relative_drop:.1%}"
    if change > rule.max_relative_gain and not rule.allow_large_gain:
        return False, (
            f"gains {change:.1%}, more than max_relative_gain {rule.max_relative_gain:.1%}: "
            "likely a leak between training and test (allow_large_gain to accept)"
        )
    return True, f"{change:+.1%}"


class OfflineGate:
    """The gate of one server (``[gate] enabled``): judges each new version before it serves, logs
    the per-task table, counts each verdict (``unirank.gate.decisions``) and keeps the last
    decision (``GetModelInfo.last_gate``)."""

    def __init__(self, profile: Profile, telemetry: Telemetry) -> None:
        self.enabled = profile.gate.enabled
        self.section: GateSection = profile.gate
        self.rules = {name: task.gate for name, task in profile.tasks.items()}
        self._telemetry = telemetry
        self.last: GateDecision | None = None
        """The last decision since the server started; None while no version has been judged."""

    async def check(
        self, candidate: ModelRuntime, serving: ModelRuntime, pinned: Mapping[str, ModelRuntime]
    ) -> None:
        """Refuse ``candidate`` (ArtifactError with the per-task reasons) where it is worse than the
        version serving a use-case: ``serving``, or the one ``pinned`` names for it."""
        if not self.enabled:
            return
        pinned_artifacts = {task: runtime.artifact for task, runtime in pinned.items()}
        rescored = await self._rescore(candidate, {task: pinned.get(task, serving) for task in self.rules})
        decision = judge(serving.artifact, candidate.artifact, self.rules, pinned_artifacts, rescored)
        self.last = decision
        for row in decision.rows:
            self._telemetry.count_gate(row.task, row.passed)
        verdict = "passes" if decision.accepted else "is refused by"
        log.info(
            "version %s %s the offline gate against %s:\n%s",
            candidate.version,
            verdict,
            serving.version,
            decision.table(),
        )
        if not decision.accepted:
            raise ArtifactError(
                f"version {candidate.version} is refused by the offline gate: {decision.refusals()}"
            )

    async def _rescore(
        self, candidate: ModelRuntime, serving: Mapping[str, ModelRuntime]
    ) -> dict[str, Rescored] | None:
        """Both versions' values on the profile's validation log (None: the profile names none)."""
        section = self.section
        if not section.validation_logs:
            return None
        try:
            rows = await asyncio.to_thread(read_rows, section.validation_logs, section.max_rows)
        except ValidationLogError as exc:
            raise ArtifactError(f"version {candidate.version} cannot be judged: {exc}") from exc
        metrics_by_task = {task: rule.metric for task, rule in self.rules.items()}
        return await rescore_tasks(rows, serving, candidate, metrics_by_task, section.max_candidates)
