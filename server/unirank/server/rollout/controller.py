"""The canary rollout of one server: which version answers each request, the periodic judgement of
each use-case's canary, its promotion or rollback, and the state that survives a restart.

The composition root (:mod:`unirank.server.app`) builds one per server when ``[rollout] enabled``,
hands it every version that passes the offline gate (:meth:`RolloutController.begin`) and runs
:meth:`RolloutController.run` as a background task; the pipeline asks it which runtime and arm
answer each request (:meth:`RolloutController.route`) and tells it how each answer went.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unirank.artifact.store import ArtifactError
from unirank.artifact.tasks import task_by_name
from unirank.server.config import RolloutSection
from unirank.server.rollout.guards import ArmOps, guard_breach
from unirank.server.rollout.judge import ArmCounts, CanaryJudge, Decision, JudgeKnobs, Verdict
from unirank.server.rollout.srm import ArmUsers
from unirank.server.rollout.state import (
    CANARY,
    PROMOTED,
    ROLLED_BACK,
    STABLE,
    Rollout,
    TaskRollout,
    bucket,
    load_rollout,
    rollout_paths,
    save_rollout,
    write_retrain_request,
)
from unirank.server.runtime import ModelRuntime
from unirank.server.telemetry.kpi import KpiCounters

if TYPE_CHECKING:
    from unirank.server.pipeline import RankingPipeline

log = logging.getLogger(__name__)


class RolloutRefusedError(Exception):
    """An operator's rollout command cannot be carried out now (no rollout, unknown use-case...)."""


@dataclass(frozen=True)
class _Seen:
    impressions: int
    clicks: int
    plays: int


Finished = Callable[[ModelRuntime, list[ModelRuntime]], Awaitable[None]]
"""Called when a rollout ends: the version that now serves by default, and versions no longer used."""


class RolloutController:
    """Routes requests between the stable and canary versions and judges the canary per use-case."""

    def __init__(
        self,
        section: RolloutSection,
        tasks: Iterable[str],
        default: ModelRuntime,
        default_path: Path,
        kpis: KpiCounters,
        state_path: Path,
        retrain_path: Path,
    ) -> None:
        self.section = section
        self.tasks = tuple(sorted(tasks))
        self.kpis = kpis
        self.state_path = state_path
        self.retrain_path = retrain_path
        self.default = default
        """The version answering use-cases outside any rollout (the pipeline's runtime)."""
        self.runtimes: dict[str, ModelRuntime] = {default.version: default}
        self.paths: dict[str, str] = {default.version: str(default_path.resolve())}
        self.rollout: Rollout | None = None
        self.on_finished: Finished | None = None
        self.reload: Callable[[], Awaitable[str]] | None = None
        """Looks for a new version (the server's reload): one that passes the gate calls :meth:`begin`."""
        self._ops: dict[tuple[str, str], ArmOps] = {}
        self._users = ArmUsers()
        """Per use-case, the distinct users each arm answered at its share: the SRM check's unit."""
        self._seen: dict[tuple[str, str], _Seen] = {}
        """Per (task, arm): the KPI counters at the last look (they restart from 0 with the process)."""
        self._lock = asyncio.Lock()
        alpha = section.alpha / 2 if section.judge_engagement else section.alpha
        self.knobs = JudgeKnobs(
            alpha=alpha,
            min_impressions=section.min_impressions,
            min_clicks=section.min_clicks,
            tolerated_drop=section.tolerated_drop,
            promote_impressions=section.promote_impressions,
            srm_p_value=section.srm_p_value,
        )

    @classmethod
    async def open(
        cls,
        artifact_path: Path,
        pipeline: RankingPipeline,
        version_dir: Path,
        kpis: KpiCounters,
        load: Callable[[Path], Awaitable[ModelRuntime]],
    ) -> RolloutController:
        """The controller of a server starting with ``pipeline.runtime`` (read from ``version_dir``),
        its saved rollout resumed and installed as the pipeline's router (ArtifactError where that
        rollout cannot be resumed: a version it names is gone or changed)."""
        section, runtime = pipeline.profile.rollout, pipeline.runtime
        state, retrain = rollout_paths(section.state_file, section.retrain_request_file, artifact_path)
        controller = cls(section, pipeline.profile.tasks, runtime, version_dir, kpis, state, retrain)
        try:
            await controller.resume(load)
        except ValueError as exc:
            raise ArtifactError(f"cannot resume the rollout in {state}: {exc}") from exc
        if runtime.version not in controller.runtimes:
            log.info(
                "version %s waits for rollout %s to end", runtime.version, controller.describe()["rollout_id"]
            )
            await runtime.close()
        if controller.default is not runtime:
            pipeline.swap_runtime(controller.default)
        pipeline.arms = controller
        return controller

    async def close(self, keep: ModelRuntime) -> None:
        """Close every loaded version but ``keep`` (the server closes that one)."""
        for runtime in [r for r in self.runtimes.values() if r is not keep]:
            await runtime.close()

    # -- serving ------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.rollout is not None and self.rollout.active

    def route(self, task: str, user_key: str) -> tuple[ModelRuntime, str]:
        """The runtime and arm that answer ``task`` for the user (or request) ``user_key``."""
        rollout = self.rollout
        if rollout is None or task not in rollout.tasks:
            return self.default, STABLE
        state = rollout.tasks[task]
        canary = self.runtimes[rollout.canary_version]
        if state.status == PROMOTED:
            return canary, STABLE
        stable = self.runtimes[state.stable_version]
        if state.status == CANARY and bucket(user_key, rollout.rollout_id) < rollout.steps[state.step]:
            return canary, CANARY
        return stable, STABLE

    def serving_runtimes(self) -> dict[str, ModelRuntime]:
        """Per use-case, the version answering it outside any canary (the offline gate compares a
        new version with it)."""
        return {task: self.route(task, "")[0] for task in self.tasks}

    def _arm_ops(self, task: str, arm: str) -> ArmOps:
        ops = self._ops.get((task, arm))
        if ops is None:
            ops = self._ops[(task, arm)] = ArmOps()
        return ops

    def answered(self, task: str, arm: str, fallback: bool, seconds: float, user_key: str = "") -> None:
        if self.active:
            self._arm_ops(task, arm).answered(fallback, seconds)
            self._users.saw(task, arm, user_key)

    def failed(self, task: str, arm: str) -> None:
        if self.active:
            self._arm_ops(task, arm).failed()

    # -- lifecycle ----------------------------------------------------------------------------

    async def resume(self, load: Callable[[Path], Awaitable[ModelRuntime]]) -> Rollout | None:
        """Load the saved rollout, if any, and every version it serves (``load`` reads one that is
        not the default already). A finished rollout keeps its use-cases where it left them; an
        active one goes on from its last step and judgement: nothing is promoted again."""
        rollout = load_rollout(self.state_path)
        if rollout is None:
            return None
        needed = {rollout.canary_version} if rollout.active else set()
        needed |= {rollout.serving_version(task) for task in rollout.tasks}
        if rollout.active:
            needed |= {state.stable_version for state in rollout.tasks.values()}
        for version in sorted(needed):
            if version in self.runtimes:
                continue
            path = Path(rollout.versions[version])
            runtime = await load(path)
            if runtime.version != version:
                await runtime.close()
                raise ValueError(
                    f"{path} now holds version {runtime.version}, the rollout state names {version}"
                )
            self.runtimes[version] = runtime
            self.paths[version] = str(path)
        self.rollout = rollout
        self.default = self.runtimes[self._default_version(rollout)]
        log.info(
            "resumed rollout %s of %s (%s): %s",
            rollout.rollout_id,
            rollout.canary_version,
            "active" if rollout.active else "finished",
            ", ".join(f"{name} {task.status}" for name, task in sorted(rollout.tasks.items())),
        )
        return rollout

    def unused(self) -> list[ModelRuntime]:
        """Loaded versions no use-case can be answered by any more (to be closed), forgotten here."""
        used = {self.default.version}
        rollout = self.rollout
        if rollout is not None:
            used |= {rollout.serving_version(task) for task in rollout.tasks}
            if rollout.active:
                used |= {rollout.canary_version} | {t.stable_version for t in rollout.tasks.values()}
        gone = [runtime for version, runtime in self.runtimes.items() if version not in used]
        for runtime in gone:
            del self.runtimes[runtime.version]
            self.paths.pop(runtime.version, None)
        return gone

    def is_last_canary(self, path: Path) -> bool:
        """``path`` is the canary of the current or last rollout: never rolled out twice."""
        return self.rollout is not None and self.rollout.canary_path == str(path.resolve())

    def begin(self, canary: ModelRuntime, path: Path) -> Rollout:
        """Start judging ``canary`` (passed the gate) against what serves each use-case now."""
        if self.active:
            raise RolloutRefusedError("a rollout is already active: promote or abort it first")
        previous = self.rollout
        stable = {task: self.route(task, "")[0] for task in self.tasks}
        self.runtimes[canary.version] = canary
        self.paths[canary.version] = str(path.resolve())
        versions = {runtime.version: self.paths[runtime.version] for runtime in stable.values()}
        versions[canary.version] = self.paths[canary.version]
        rollout = Rollout(
            rollout_id=uuid.uuid4().hex[:12],
            canary_version=canary.version,
            versions=versions,
            steps=tuple(self.section.steps),
            tasks={task: TaskRollout(stable_version=stable[task].version) for task in self.tasks},
            started_unix_ms=int(time.time() * 1000),
        )
        for task in self.tasks:  # (the gate refuses such a version first, where it is on)
            if not canary.has_head(task_by_name(task)):
                state = rollout.tasks[task]
                state.status, state.verdict = ROLLED_BACK, "rollback"
                state.reason = f"version {canary.version} has no trained head for {task}"
        self.rollout = rollout
        self._ops.clear()
        self._users.reset()
        self._seen = {key: self._raw(*key) for key in self._keys(rollout)}
        save_rollout(self.state_path, rollout)
        log.info(
            "rollout %s: version %s is the canary of %s at %g %% (stable: %s)",
            rollout.rollout_id,
            canary.version,
            ", ".join(self.tasks),
            rollout.steps[0],
            ", ".join(sorted(versions.keys() - {canary.version})),
        )
        if previous is not None:
            log.info("rollout %s replaced finished rollout %s", rollout.rollout_id, previous.rollout_id)
        return rollout

    async def run(self, interval_s: float) -> None:
        """Look at every use-case of an active rollout every ``interval_s`` seconds."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.look()
            except Exception:
                log.exception("rollout look failed; trying again in %.0f s", interval_s)

    # -- judging ------------------------------------------------------------------------------

    def _keys(self, rollout: Rollout) -> list[tuple[str, str]]:
        return [(task, arm) for task in rollout.tasks for arm in (CANARY, STABLE)]

    def _raw(self, task: str, arm: str) -> _Seen:
        rollout = self.rollout
        assert rollout is not None
        version = rollout.canary_version if arm == CANARY else rollout.tasks[task].stable_version
        stats = self.kpis.of(task, version, arm)
        return _Seen(stats.impressions, stats.clicks, stats.plays)

    def _fresh(self, task: str, arm: str) -> tuple[_Seen, _Seen]:
        """(KPI counters now, at the last batch the judge took in) of ``arm``."""
        now, before = self._raw(task, arm), self._seen.get((task, arm), _Seen(0, 0, 0))
        if now.impressions < before.impressions:  # counters dropped (an evicted version): start over
            before = _Seen(0, 0, 0)
        return now, before

    def _counts(self, task: str, arm: str, state: TaskRollout) -> tuple[ArmCounts, ArmCounts]:
        """Cumulative (clicks, plays) counts of ``arm`` since the rollout began, this batch's included.

        Counted per answer, several clicks on one answer are clamped to its impressions (the judge
        conditions on impressions; in practice clicks are far fewer)."""
        now, before = self._fresh(task, arm)
        self._seen[(task, arm)] = now
        ctr_prev = state.ctr.canary if arm == CANARY else state.ctr.stable
        eng_prev = state.engagement.canary if arm == CANARY else state.engagement.stable
        impressions = ctr_prev.impressions + now.impressions - before.impressions
        clicks = min(impressions, ctr_prev.clicks + max(0, now.clicks - before.clicks))
        plays = min(impressions, eng_prev.clicks + max(0, now.plays - before.plays))
        return ArmCounts(impressions, clicks), ArmCounts(impressions, plays)

    def _batch_ready(self, task: str, share: float) -> bool:
        """Each arm still given traffic has ``look_impressions`` new impressions: the judge weighs a
        batch's clicks by its impressions' split, so tiny batches (whose clicks mostly belong to the
        previous one's answers) would waste the evidence."""
        arms = (CANARY,) if share >= 1.0 else (CANARY, STABLE)
        fresh = [self._fresh(task, arm) for arm in arms]
        return all(
            now.impressions - before.impressions >= self.section.look_impressions for now, before in fresh
        )

    async def look(self) -> Rollout | None:
        """Judge every use-case still a canary once; returns the rollout (None without one)."""
        async with self._lock:
            rollout = self.rollout
            if rollout is None or rollout.finished_unix_ms:
                return rollout
            for task, state in sorted(rollout.tasks.items()):
                if state.status == CANARY:
                    self._judge(rollout, task, state)
            await self._persist(rollout)
            return rollout

    def _judge(self, rollout: Rollout, task: str, state: TaskRollout) -> None:
        share = rollout.steps[state.step] / 100.0
        if not self._batch_ready(task, share):
            return
        canary_ctr, canary_eng = self._counts(task, CANARY, state)
        stable_ctr, stable_eng = self._counts(task, STABLE, state)
        ctr_judge = CanaryJudge(self.knobs, state.ctr)
        users = self._users.split(task, share)
        ctr = ctr_judge.observe(canary_ctr, stable_ctr, share, users)
        state.ctr, state.e_value = ctr_judge.state, ctr.e_value
        decisions: list[Decision] = [ctr]
        if self.section.judge_engagement:
            engagement_judge = CanaryJudge(replace(self.knobs, metric="play rate"), state.engagement)
            decisions.append(engagement_judge.observe(canary_eng, stable_eng, share, users))
            state.engagement = engagement_judge.state
        breach = guard_breach(self._arm_ops(task, CANARY), self._arm_ops(task, STABLE), self.section.guards)
        rollback = next((d for d in decisions if d.verdict is Verdict.ROLLBACK), None)
        hold = next((d for d in decisions if d.verdict is Verdict.HOLD), None)
        if breach is not None:
            self._decide(rollout, task, ROLLED_BACK, "rollback", breach)
        elif rollback is not None:
            self._decide(rollout, task, ROLLED_BACK, "rollback", rollback.reason)
        elif hold is not None:
            state.verdict, state.reason = "hold", hold.reason
        elif canary_ctr.impressions - state.step_started_at < self.section.step_impressions or (
            rollout.steps[state.step] < 100.0 and not self._enough(canary_ctr, stable_ctr)
        ):
            state.verdict, state.reason = ctr.verdict.value, ctr.reason
        elif rollout.steps[state.step] == 100.0:
            self._decide(rollout, task, PROMOTED, "promote", f"passed every step; {state.reason}")
        elif rollout.steps[state.step + 1] == 100.0 and ctr.verdict is not Verdict.PROMOTE:
            # All traffic on the canary leaves stable none to compare with: the judge's budget is
            # spent on a split step first.
            state.verdict, state.reason = ctr.verdict.value, ctr.reason
        else:
            state.step += 1
            state.step_started_at = canary_ctr.impressions
            self._users.reset(task)  # users are counted per share
            share = rollout.steps[state.step]
            state.verdict = "continue" if share < 100.0 else "promote"
            state.reason = f"step {state.step + 1}: {share:g} %" + (
                "" if share < 100.0 else f" ({ctr.reason})"
            )
            log.info("rollout %s: %s canary now answers %g %% of users", rollout.rollout_id, task, share)

    def _enough(self, canary: ArmCounts, stable: ArmCounts) -> bool:
        """Both arms have the judge's minimum impressions and clicks."""
        knobs = self.knobs
        impressions = min(canary.impressions, stable.impressions)
        return impressions >= knobs.min_impressions and min(canary.clicks, stable.clicks) >= knobs.min_clicks

    def _decide(
        self, rollout: Rollout, task: str, status: str, verdict: str, reason: str, operator: bool = False
    ) -> None:
        state = rollout.tasks[task]
        state.status, state.verdict, state.reason, state.operator = status, verdict, reason, operator
        log.warning(
            "rollout %s: %s %s (version %s): %s",
            rollout.rollout_id,
            task,
            "PROMOTED" if status == PROMOTED else "ROLLED BACK",
            rollout.canary_version,
            reason,
        )
        if status == ROLLED_BACK and not operator:
            failing = write_retrain_request(self.retrain_path, rollout)
            log.warning("retrain request for %s written to %s", ", ".join(failing), self.retrain_path)

    async def _persist(self, rollout: Rollout) -> None:
        """Save the state; when no use-case is left a canary, end the rollout."""
        finishing = not rollout.active and not rollout.finished_unix_ms
        if finishing:
            rollout.finished_unix_ms = int(time.time() * 1000)
            if any(task.status == PROMOTED for task in rollout.tasks.values()):
                self.default = self.runtimes[rollout.canary_version]
        save_rollout(self.state_path, rollout)
        if finishing:
            log.info(
                "rollout %s finished: %s",
                rollout.rollout_id,
                ", ".join(f"{name} {task.status}" for name, task in sorted(rollout.tasks.items())),
            )
            if self.on_finished is not None:
                await self.on_finished(self.default, self.unused())

    @staticmethod
    def _default_version(rollout: Rollout) -> str:
        """The version answering by default: the canary once any use-case promoted it, else the
        stable version most use-cases keep."""
        if any(task.status == PROMOTED for task in rollout.tasks.values()) or not rollout.tasks:
            return rollout.canary_version
        kept = Counter(task.stable_version for task in rollout.tasks.values())
        return kept.most_common(1)[0][0]

    # -- operator commands --------------------------------------------------------------------

    async def command(self, status: str, tasks: Iterable[str]) -> Rollout:
        """Promote (``status`` PROMOTED) or roll back the named use-cases now (all canaries if none)."""
        async with self._lock:
            rollout = self.rollout
            if rollout is None or not rollout.active:
                raise RolloutRefusedError("no rollout is active")
            names = list(dict.fromkeys(tasks)) or [n for n, t in rollout.tasks.items() if t.status == CANARY]
            unknown = [name for name in names if name not in rollout.tasks]
            if unknown:
                raise RolloutRefusedError(
                    f"not in the rollout: {', '.join(unknown)}; it has {', '.join(rollout.tasks)}"
                )
            decided = [name for name in names if rollout.tasks[name].status != CANARY]
            if decided:
                raise RolloutRefusedError(f"already decided: {', '.join(decided)}")
            verdict = "promote" if status == PROMOTED else "rollback"
            for name in names:
                by = "promoted" if status == PROMOTED else "rolled back"
                self._decide(rollout, name, status, verdict, f"{by} by an operator", operator=True)
            await self._persist(rollout)
            return rollout

    async def start(self) -> Rollout:
        """``unirank rollout start``: look for a new version now; it becomes the canary if it passes
        the gate (RolloutRefusedError otherwise, saying why)."""
        if self.active:
            raise RolloutRefusedError("a rollout is already active: promote or abort it first")
        before = self.rollout
        assert self.reload is not None, "start() before the server set reload"
        try:
            await self.reload()
        except ArtifactError as exc:
            raise RolloutRefusedError(str(exc)) from exc
        if self.rollout is before or self.rollout is None:
            raise RolloutRefusedError("no new version in the artifact repository to roll out")
        return self.rollout

    def describe(self) -> dict[str, Any]:
        """The rollout as plain data (status RPC, logs)."""
        rollout = self.rollout
        if rollout is None:
            return {"rollout_id": "", "state": "none"}
        return {
            **rollout.to_dict(),
            "state": "active" if rollout.active else "finished",
            "shares": {task: rollout.share(task) for task in rollout.tasks},
        }
