"""Rollout parts without a server: the sticky split, the persisted state, the guards, and the
controller's decisions on counts it is fed (SRM hold, a guard's rollback, a resumed rollout)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from unirank.server.config import RolloutGuards, RolloutSection
from unirank.server.rollout.controller import RolloutController, RolloutRefusedError
from unirank.server.rollout.guards import ArmOps, guard_breach
from unirank.server.rollout.state import ROLLED_BACK, bucket, load_rollout, save_rollout
from unirank.server.runtime import ModelRuntime
from unirank.server.telemetry.kpi import KpiCounters


def test_the_split_is_sticky_even_and_per_rollout() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    places = {user: bucket(user, "r1") for user in users}
    assert places == {user: bucket(user, "r1") for user in users}  # the same user, the same place
    for share in (5.0, 25.0, 50.0):
        assert abs(sum(p < share for p in places.values()) / len(users) - share / 100) < 0.01
    at_10 = {u for u, p in places.items() if p < 10}
    at_50 = {u for u, p in places.items() if p < 50}
    assert at_10 < at_50  # a canary user stays one as the share grows
    other = {u for u in users if bucket(u, "r2") < 10}
    assert 0.05 < len(other & at_10) / len(at_10) < 0.15  # a new rollout reshuffles users


def test_guards() -> None:
    limits = RolloutGuards(min_requests=100)
    stable, canary = ArmOps(), ArmOps()
    for _ in range(100):
        stable.answered(False, 0.010)
        canary.answered(False, 0.011)
    assert guard_breach(canary, stable, limits) is None
    for _ in range(5):
        canary.failed()
    assert "error rate" in (guard_breach(canary, stable, limits) or "")
    slow = ArmOps()
    for _ in range(100):
        slow.answered(False, 0.100)
    assert "p99" in (guard_breach(slow, stable, limits) or "")
    few = ArmOps()
    for _ in range(99):
        few.failed()
    assert guard_breach(few, stable, limits) is None  # too few answers to tell


@dataclass
class _Runtime:
    """What the controller uses of a loaded version."""

    version: str
    closed: bool = False
    headless: tuple[str, ...] = ()

    async def close(self) -> None:
        self.closed = True

    def has_head(self, spec: Any) -> bool:
        return spec.name not in self.headless


def _controller(tmp_path: Path, **knobs: Any) -> tuple[RolloutController, KpiCounters]:
    section = RolloutSection(
        enabled=True,
        steps=(25.0, 50.0, 100.0),
        step_impressions=100,
        min_impressions=100,
        min_clicks=10,
        promote_impressions=400,
        look_impressions=1,
        judge_engagement=False,
        **knobs,
    )
    kpis = KpiCounters()
    stable = cast(ModelRuntime, _Runtime("v1"))
    controller = RolloutController(
        section, ["search"], stable, tmp_path / "v1", kpis, tmp_path / "state.json", tmp_path / "retrain.json"
    )
    controller.begin(cast(ModelRuntime, _Runtime("v2")), tmp_path / "v2")
    return controller, kpis


def _traffic(kpis: KpiCounters, canary: tuple[int, int], stable: tuple[int, int]) -> None:
    for arm, version, (impressions, clicks) in (("canary", "v2", canary), ("stable", "v1", stable)):
        stats = kpis.of("search", version, arm)
        stats.impressions += impressions
        stats.events["click"] += clicks


def _users(controller: RolloutController, n: int, arm: str | None = None) -> None:
    """``n`` distinct users answered, each by its routed arm (or all by ``arm``)."""
    for i in range(n):
        key = f"user-{i}"
        controller.answered("search", arm or controller.route("search", key)[1], False, 0.01, key)


def test_a_sample_ratio_mismatch_of_users_holds_the_task(tmp_path: Path) -> None:
    controller, kpis = _controller(tmp_path)
    _users(controller, 300, "canary")  # announced 25 %: half the users reach the canary
    _users(controller, 300, "stable")
    _traffic(kpis, canary=(300, 30), stable=(900, 90))  # impressions as announced
    rollout = asyncio.run(controller.look())
    assert rollout is not None
    task = rollout.tasks["search"]
    assert (task.status, task.verdict, task.step) == ("canary", "hold", 0)
    assert "sample-ratio mismatch: canary got 300 users, 150 expected" in task.reason


def test_heavy_users_do_not_fake_a_sample_ratio_mismatch(tmp_path: Path) -> None:
    """The split is by user: a few heavy canary users put 75 % of the impressions on the canary at
    a 25 % step, while the distinct users split as announced; the task is judged, not held."""
    controller, kpis = _controller(tmp_path)
    _users(controller, 1_000)
    split = controller._users.split("search", 0.25)
    assert 0.2 < split.canary / (split.canary + split.stable) < 0.3
    _traffic(kpis, canary=(900, 90), stable=(300, 30))
    rollout = asyncio.run(controller.look())
    assert rollout is not None
    task = rollout.tasks["search"]
    assert task.verdict != "hold" and "sample-ratio" not in task.reason
    assert task.step == 1  # 100 canary impressions at 25 % with the minimum counts: next step


def test_a_guard_rolls_back_and_writes_a_retrain_request(tmp_path: Path) -> None:
    controller, kpis = _controller(tmp_path, guards=RolloutGuards(min_requests=50))
    for _ in range(60):
        controller.answered("search", "stable", False, 0.01)
        controller.answered("search", "canary", True, 0.01)  # every canary answer a fallback
    _traffic(kpis, canary=(60, 6), stable=(60, 6))
    rollout = asyncio.run(controller.look())
    assert rollout is not None and rollout.tasks["search"].status == ROLLED_BACK
    assert "fallback rate" in rollout.tasks["search"].reason and not rollout.active
    request = json.loads((tmp_path / "retrain.json").read_text())
    assert request["tasks"] == ["search"] and "fallback rate" in request["failures"]["search"]["reason"]
    # Rolled back: every user is answered by stable, and the canary version is not used any more.
    assert {controller.route("search", f"u{i}")[1] for i in range(50)} == {"stable"}
    with pytest.raises(RolloutRefusedError, match="no rollout is active"):
        asyncio.run(controller.command(ROLLED_BACK, []))


def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    controller, kpis = _controller(tmp_path)
    _traffic(kpis, canary=(100, 10), stable=(300, 30))
    asyncio.run(controller.look())
    saved = load_rollout(tmp_path / "state.json")
    assert saved is not None and saved.tasks["search"].step == 1  # advanced: 100 canary impressions
    assert saved.tasks["search"].ctr.canary.impressions == 100
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # written atomically

    # A new process: its counters start at 0, the judge's do not.
    fresh = KpiCounters()
    restarted = RolloutController(
        controller.section,
        ["search"],
        cast(ModelRuntime, _Runtime("v2")),
        tmp_path / "v2",
        fresh,
        tmp_path / "state.json",
        tmp_path / "retrain.json",
    )
    loaded: list[Path] = []

    async def load(path: Path) -> ModelRuntime:
        loaded.append(path)
        return cast(ModelRuntime, _Runtime(path.name))

    resumed = asyncio.run(restarted.resume(load))
    assert resumed is not None and resumed.rollout_id == saved.rollout_id
    assert [p.name for p in loaded] == ["v1"]  # the stable version is loaded again
    assert restarted.default.version == "v1"  # not the newest on disk: nothing re-promoted
    assert restarted.is_last_canary(tmp_path / "v2")
    _traffic(fresh, canary=(10, 1), stable=(10, 1))
    asyncio.run(restarted.look())
    assert restarted.rollout is not None and restarted.rollout.tasks["search"].ctr.canary.impressions == 110

    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"state\.json"):
        load_rollout(tmp_path / "state.json")
    assert load_rollout(tmp_path / "nothing.json") is None


def test_a_rollout_state_round_trips(tmp_path: Path) -> None:
    controller, _ = _controller(tmp_path)
    assert controller.rollout is not None
    save_rollout(tmp_path / "copy.json", controller.rollout)
    assert load_rollout(tmp_path / "copy.json") == controller.rollout


@dataclass
class _Metrics:
    """What the offline gate reads of an artifact."""

    model_version: str
    ndcg: float

    @property
    def metrics(self) -> dict[str, Any]:
        return {
            "tasks": {"search": {"model": {"ndcg@10": self.ndcg}}},
            "evaluation": {"rows": {"search": 500}},
        }


def test_the_gate_compares_a_pinned_use_case_with_its_own_version() -> None:
    from unirank.artifact import Artifact
    from unirank.server.config import GateRule
    from unirank.server.gate import judge

    def artifact(version: str, ndcg: float) -> Artifact:
        return cast(Artifact, _Metrics(version, ndcg))

    rules = {"search": GateRule()}
    default, pinned, new = artifact("v2", 0.30), artifact("v1", 0.50), artifact("v3", 0.40)
    assert judge(default, new, rules).accepted  # +33 % against the default version
    decision = judge(default, new, rules, {"search": pinned})  # search is still served by v1
    assert not decision.accepted and "drops 20.0%" in decision.refusals()


def test_a_use_case_the_canary_has_no_head_for_stays_on_stable(tmp_path: Path) -> None:
    section = RolloutSection(enabled=True)
    controller = RolloutController(
        section,
        ["search", "category"],
        cast(ModelRuntime, _Runtime("v1")),
        tmp_path / "v1",
        KpiCounters(),
        tmp_path / "state.json",
        tmp_path / "retrain.json",
    )
    rollout = controller.begin(cast(ModelRuntime, _Runtime("v2", headless=("search",))), tmp_path / "v2")
    assert (
        rollout.tasks["search"].status == ROLLED_BACK and "no trained head" in rollout.tasks["search"].reason
    )
    assert rollout.tasks["category"].status == "canary"
    assert {controller.route("search", f"u{i}")[0].version for i in range(50)} == {"v1"}
