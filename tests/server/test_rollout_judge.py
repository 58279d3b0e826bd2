"""The canary judge's statistics on simulated rollouts: seeded, no server.

Every simulated rollout looks after every batch of ``BATCH`` impressions, so these are the
continuous-monitoring figures docs/rollouts.md quotes (``pytest -q tests/server/test_rollout_judge.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from unirank.server.rollout import ArmCounts, CanaryJudge, JudgeKnobs, JudgeState, Verdict
from unirank.server.rollout.judge import DEFAULT_PROMOTE_IMPRESSIONS, UserSplit

RUNS = 1_000
BATCH = 2_000
SHARE = 0.5
CTR = 0.05
KNOBS = JudgeKnobs()
#: Looks until the canary passes the promotion budget (plus slack for the binomial split).
LOOKS = int(DEFAULT_PROMOTE_IMPRESSIONS / (BATCH * SHARE) * 1.1) + 1


@dataclass(frozen=True)
class Paths:
    """Cumulative counts of ``RUNS`` simulated rollouts at each of ``LOOKS`` looks."""

    canary_imps: np.ndarray
    canary_clicks: np.ndarray
    stable_imps: np.ndarray
    stable_clicks: np.ndarray


def simulate(seed: int, canary_ctr: float, stable_ctr: float = CTR, looks: int = LOOKS) -> Paths:
    rng = np.random.default_rng(seed)
    n_c = rng.binomial(BATCH, SHARE, size=(RUNS, looks))
    n_s = BATCH - n_c
    x_c = rng.binomial(n_c, canary_ctr)
    x_s = rng.binomial(n_s, stable_ctr)
    return Paths(n_c.cumsum(1), x_c.cumsum(1), n_s.cumsum(1), x_s.cumsum(1))


def judge_run(paths: Paths, run: int) -> tuple[Verdict, int]:
    """Feed one simulated rollout to a judge until it rolls back or promotes."""
    judge = CanaryJudge(KNOBS)
    decision = None
    for t in range(paths.canary_imps.shape[1]):
        decision = judge.observe(
            ArmCounts(int(paths.canary_imps[run, t]), int(paths.canary_clicks[run, t])),
            ArmCounts(int(paths.stable_imps[run, t]), int(paths.stable_clicks[run, t])),
            SHARE,
        )
        if decision.verdict in (Verdict.ROLLBACK, Verdict.PROMOTE):
            return decision.verdict, decision.canary.impressions
    assert decision is not None
    return decision.verdict, decision.canary.impressions


def naive_z_rollbacks(paths: Paths, alpha: float) -> np.ndarray:
    """A repeated one-sided two-proportion z-test at every look: the broken baseline."""
    p_c = paths.canary_clicks / paths.canary_imps
    p_s = paths.stable_clicks / paths.stable_imps
    pooled = (paths.canary_clicks + paths.stable_clicks) / (paths.canary_imps + paths.stable_imps)
    se = np.sqrt(pooled * (1 - pooled) * (1 / paths.canary_imps + 1 / paths.stable_imps))
    z = (p_c - p_s) / se
    z_crit = -1.6448536269514722  # one-sided 5 %
    assert alpha == 0.05
    enough = (
        (paths.canary_imps >= KNOBS.min_impressions)
        & (paths.stable_imps >= KNOBS.min_impressions)
        & (paths.canary_clicks >= KNOBS.min_clicks)
        & (paths.stable_clicks >= KNOBS.min_clicks)
    )
    before_budget = paths.canary_imps < KNOBS.promote_impressions
    return ((z <= z_crit) & enough & before_budget).any(axis=1)


@pytest.fixture(scope="module")
def aa_paths() -> Paths:
    return simulate(seed=16, canary_ctr=CTR)


@pytest.fixture(scope="module")
def aa_outcomes(aa_paths: Paths) -> list[tuple[Verdict, int]]:
    return [judge_run(aa_paths, r) for r in range(RUNS)]


def test_aa_false_rollback_rate_is_at_most_alpha_where_a_repeated_z_test_is_not(
    aa_paths: Paths, aa_outcomes: list[tuple[Verdict, int]]
) -> None:
    judged = np.mean([verdict is Verdict.ROLLBACK for verdict, _ in aa_outcomes])
    naive = naive_z_rollbacks(aa_paths, KNOBS.alpha).mean()
    # Same simulated data, ~80 looks each: a correct anytime-valid test stays under alpha (its
    # sd over 1,000 runs is < 0.007), the naive test, peeking at every look, is far above it.
    assert judged <= KNOBS.alpha
    assert naive >= 2 * KNOBS.alpha
    print(f"A/A false-rollback rate: judge {judged:.3f}, repeated z-test {naive:.3f}")


def test_aa_promotes_once_the_budget_is_reached(aa_outcomes: list[tuple[Verdict, int]]) -> None:
    promoted = [imps for verdict, imps in aa_outcomes if verdict is Verdict.PROMOTE]
    assert len(promoted) >= (1 - KNOBS.alpha) * RUNS
    assert min(promoted) >= KNOBS.promote_impressions
    assert max(promoted) < KNOBS.promote_impressions + BATCH


def test_aa_false_rollback_rate_stays_at_most_alpha_across_share_steps() -> None:
    # 10 looks at 5 %, 10 at 25 %, then 50 % until the budget: the share changes under the e-process.
    rng = np.random.default_rng(99)
    rollbacks = 0
    for _ in range(RUNS):
        judge = CanaryJudge(KNOBS)
        canary, stable, look = (0, 0), (0, 0), 0
        while True:
            share = 0.05 if look < 10 else 0.25 if look < 20 else 0.5
            look += 1
            n_c = int(rng.binomial(BATCH, share))
            canary = (canary[0] + n_c, canary[1] + int(rng.binomial(n_c, CTR)))
            stable = (stable[0] + BATCH - n_c, stable[1] + int(rng.binomial(BATCH - n_c, CTR)))
            verdict = judge.observe(ArmCounts(*canary), ArmCounts(*stable), share).verdict
            if verdict in (Verdict.ROLLBACK, Verdict.PROMOTE):
                break
        rollbacks += verdict is Verdict.ROLLBACK
    assert rollbacks / RUNS <= KNOBS.alpha
    print(f"A/A false-rollback rate with 5/25/50 % steps: {rollbacks / RUNS:.3f}")


def test_a_ten_percent_ctr_drop_is_rolled_back_within_the_budget_in_90_percent_of_runs() -> None:
    paths = simulate(seed=17, canary_ctr=CTR * 0.9)
    outcomes = [judge_run(paths, r) for r in range(RUNS)]
    caught = np.mean([verdict is Verdict.ROLLBACK for verdict, _ in outcomes])
    assert caught >= 0.90
    print(f"10 % drop caught within {DEFAULT_PROMOTE_IMPRESSIONS} canary impressions: {caught:.3f}")


def test_a_sample_ratio_mismatch_holds_rather_than_judges() -> None:
    judge = CanaryJudge(KNOBS)
    # The canary is far worse, but it gets 40 % of traffic where 50 % was announced.
    decision = judge.observe(ArmCounts(40_000, 400), ArmCounts(60_000, 3_000), canary_share=0.5)
    assert decision.verdict is Verdict.HOLD
    assert "sample-ratio mismatch" in decision.reason
    assert decision.e_value >= 1 / KNOBS.alpha  # the evidence is there, it is just not acted on
    # The same traffic announced at 40 % is judged.
    judge = CanaryJudge(KNOBS)
    assert judge.observe(ArmCounts(40_000, 400), ArmCounts(60_000, 3_000), 0.4).verdict is Verdict.ROLLBACK


def test_the_split_of_users_decides_the_hold_where_given() -> None:
    counts = ArmCounts(40_000, 2_000), ArmCounts(60_000, 3_000)  # 40 % of impressions at 50 %
    held = CanaryJudge(KNOBS).observe(*counts, 0.5, UserSplit(400, 600, 0.5))
    assert held.verdict is Verdict.HOLD and "canary got 400 users, 500 expected" in held.reason
    judged = CanaryJudge(KNOBS).observe(*counts, 0.5, UserSplit(505, 495, 0.5))
    assert judged.verdict is Verdict.CONTINUE and judged.srm_p_value > 0.1
    # At 100 % there is no split to test: a user answered by stable across the step change is no
    # mismatch (the demo's related_items was held at 100 % by 2 such users of 14,403).
    full = CanaryJudge(KNOBS).observe(*counts, 1.0, UserSplit(14_401, 2, 1.0))
    assert full.verdict is not Verdict.HOLD and full.srm_p_value == 1.0


def test_a_matching_split_is_not_held() -> None:
    judge = CanaryJudge(KNOBS)
    decision = judge.observe(ArmCounts(5_040, 250), ArmCounts(4_960, 250), canary_share=0.5)
    assert decision.verdict is Verdict.CONTINUE
    assert decision.srm_p_value > 0.1


@pytest.mark.parametrize(
    ("canary", "stable", "short"),
    [
        (ArmCounts(900, 0), ArmCounts(900, 200), "canary"),  # too few impressions
        (ArmCounts(5_000, 50), ArmCounts(5_000, 29), "stable"),  # stable too few clicks
    ],
)
def test_no_decision_before_minimum_counts_per_arm(canary: ArmCounts, stable: ArmCounts, short: str) -> None:
    judge = CanaryJudge(KNOBS)
    decision = judge.observe(canary, stable, 0.5)
    assert decision.verdict is Verdict.CONTINUE
    assert decision.reason.startswith(short)


def test_rollback_waits_for_minimum_counts_then_sticks() -> None:
    judge = CanaryJudge(KNOBS)
    # Canary clicks nothing: overwhelming evidence, but stable has only 20 clicks.
    first = judge.observe(ArmCounts(800, 0), ArmCounts(800, 20), 0.5)
    assert first.verdict is Verdict.CONTINUE
    assert first.e_value >= 1 / KNOBS.alpha
    second = judge.observe(ArmCounts(1_600, 60), ArmCounts(1_600, 40), 0.5)
    assert second.verdict is Verdict.ROLLBACK
    # The canary then does better, so the e-value falls, but a rollback is never undone.
    third = judge.observe(ArmCounts(50_000, 5_000), ArmCounts(50_000, 2_500), 0.5)
    assert third.e_value < 1 / KNOBS.alpha
    assert third.verdict is Verdict.ROLLBACK


def test_steps_that_change_the_share_keep_one_e_process() -> None:
    # A 5 -> 25 -> 50 % rollout; the canary is 30 % worse. Evidence accumulates across steps.
    judge = CanaryJudge(KNOBS)
    canary, stable = [0, 0], [0, 0]
    rng = np.random.default_rng(5)
    verdicts = []
    for share in (0.05, 0.25, 0.5):
        for _ in range(10):
            n_c = int(rng.binomial(BATCH, share))
            canary = [canary[0] + n_c, canary[1] + int(rng.binomial(n_c, CTR * 0.7))]
            stable = [stable[0] + BATCH - n_c, stable[1] + int(rng.binomial(BATCH - n_c, CTR))]
            verdicts.append(judge.observe(ArmCounts(*canary), ArmCounts(*stable), share).verdict)
    assert Verdict.HOLD not in verdicts
    assert verdicts[-1] is Verdict.ROLLBACK


def test_the_state_survives_a_restart_through_json() -> None:
    paths = simulate(seed=6, canary_ctr=CTR * 0.9, looks=30)
    whole = CanaryJudge(KNOBS)
    halves = CanaryJudge(KNOBS)
    for t in range(30):
        counts = (
            ArmCounts(int(paths.canary_imps[0, t]), int(paths.canary_clicks[0, t])),
            ArmCounts(int(paths.stable_imps[0, t]), int(paths.stable_clicks[0, t])),
        )
        expected = whole.observe(*counts, SHARE)
        got = halves.observe(*counts, SHARE)
        if t == 14:
            halves = CanaryJudge(KNOBS, JudgeState.from_dict(json.loads(json.dumps(halves.state.to_dict()))))
    assert got == expected
    assert math.isclose(halves.e_value(), whole.e_value())


def test_counts_that_go_backwards_are_refused() -> None:
    judge = CanaryJudge(KNOBS)
    judge.observe(ArmCounts(2_000, 100), ArmCounts(2_000, 100), 0.5)
    with pytest.raises(ValueError, match="backwards"):
        judge.observe(ArmCounts(1_000, 100), ArmCounts(2_000, 100), 0.5)


@pytest.mark.parametrize(
    ("field", "value"),
    [("alpha", 0.0), ("alpha", 1.0), ("tolerated_drop", 0.6), ("srm_p_value", 0.0), ("min_clicks", -1)],
)
def test_knobs_are_validated(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        replace(KNOBS, **{field: value})


def test_promotion_budget_must_cover_minimum_impressions() -> None:
    with pytest.raises(ValueError, match="promote_impressions"):
        JudgeKnobs(min_impressions=10_000, promote_impressions=5_000)
