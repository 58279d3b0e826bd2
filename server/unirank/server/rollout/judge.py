"""Judge one task's canary against stable on CTR, validly however often it looks.

Construction (a mixture likelihood-ratio e-process on clicks conditioned on impressions)
-----------------------------------------------------------------------------------------
Each look hands the judge the cumulative impressions and clicks of both arms. The judge works
on the *increment* since the previous look (a batch ``b``): ``n_c, n_s`` impressions and
``x_c, x_s`` clicks, ``k = x_c + x_s``. Let ``w = n_c / (n_c + n_s)`` be the canary's share of the
batch's impressions and ``rho = ctr_canary / ctr_stable`` the CTR ratio.

* Conditioned on ``k``, the canary's clicks ``x_c`` are approximately ``Binomial(k, theta(rho))``
  with ``theta(rho) = rho*w / (rho*w + 1 - w)`` (exact for Poisson clicks).
* Null hypothesis ``H0: rho >= 1`` ("the canary is no worse"). For each alternative ``rho_j < 1``
  the batch factor is the binomial likelihood ratio
  ``L_j = (theta(rho_j)/w)**x_c * ((1-theta(rho_j))/(1-w))**x_s``.
* Validity with real (Bernoulli) clicks: under equal CTRs, ``x_c`` given ``k`` is *exactly*
  hypergeometric with mean ``k*w``; ``L_j`` is a convex function of ``x_c``, so by Hoeffding's
  comparison of sampling without and with replacement (W. Hoeffding, "Probability inequalities
  for sums of bounded random variables", JASA 58, 1963, Theorem 4) its conditional mean is at
  most its mean under ``Binomial(k, w)``, which is 1. A canary with a higher CTR makes ``x_c``
  Fisher-noncentral-hypergeometric with odds ratio > 1, stochastically larger, and ``L_j`` is
  decreasing in ``x_c`` (``theta(rho_j) < w``), so the mean is smaller still. Hence each
  ``prod_b L_j`` is a nonnegative supermartingale under every point of ``H0``.
* The e-process is the mixture ``E = sum_j pi_j prod_b L_j`` with fixed weights ``pi_j``
  (uniform over ``rho_j`` from ``1 - tolerated_drop`` down to ``1 - MAX_DROP``). A mixture of
  supermartingales is one, so by Ville's inequality ``P_H0(sup_t E_t >= 1/alpha) <= alpha``:
  the false-rollback rate is at most ``alpha`` however often, and whenever, the judge looks
  (H. Robbins, "Statistical methods related to the law of the iterated logarithm", Ann. Math.
  Statist. 41, 1970; A. Ramdas, P. Grünwald, V. Vovk, G. Shafer, "Game-theoretic statistics and
  safe anytime-valid inference", Statist. Sci. 38, 2023).
  The allocation ``w`` may change between batches (rollout steps); a batch with only one arm
  (``w`` in {0, 1}) carries no evidence and contributes a factor 1.

Decisions
---------
Checked in this order on every look:

1. **hold** — sample-ratio mismatch: the canary's cumulative impressions differ from what the
   announced shares predict (chi-square, one degree of freedom, p below ``srm_p_value``). The arm
   is held, not judged, while traffic is wrong (the e-process still absorbs the counts: its
   validity uses the observed ``w``, not the announced one).
2. **continue** — either arm has fewer than ``min_impressions`` impressions or ``min_clicks``
   clicks: no decision yet.
3. **rollback** — ``E >= 1/alpha``: evidence that the canary's CTR is lower. Sticky: once crossed,
   every later look says rollback.
4. **promote** — the canary arm has reached ``promote_impressions`` impressions and the e-process
   never crossed. ``DEFAULT_PROMOTE_IMPRESSIONS`` is the budget at which a 10 % relative CTR drop
   is caught in >= 90 % of runs (measured, see ``docs/rollouts.md``: base CTR 5 %, a 50/50 split,
   looks every 2,000 impressions, alpha = 0.05), so a canary that is 10 % worse is promoted in at
   most ~10 % of such rollouts, and an A/A canary is promoted in at least ``1 - alpha``.
5. **continue** otherwise.

Promotion is "no detectable harm within the budget", not a proof of "no worse": a smaller drop
than ``tolerated_drop`` is, by design, rarely caught within the budget.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

import numpy as np

#: Largest relative CTR drop the mixture puts weight on (the canary at half stable's CTR).
MAX_DROP = 0.5
#: Number of alternatives in the mixture, spaced evenly in ``log(rho)``.
MIXTURE_POINTS = 16
#: Canary impressions after which an uncrossed e-process promotes (see the module docstring):
#: a 10 % relative drop at a 5 % base CTR on a 50/50 split, looked at every 2,000 impressions, is
#: caught before this in >= 90 % of runs (measured: 90th percentile ~71,000 canary impressions).
#: At another base CTR scale it by 0.05 / ctr: the evidence is in the clicks.
DEFAULT_PROMOTE_IMPRESSIONS = 80_000


@dataclass(frozen=True)
class JudgeKnobs:
    """How one task's canary is judged; the server maps a profile section onto this."""

    alpha: float = 0.05
    """Largest false-rollback probability, over the whole rollout, for a canary that is no worse."""
    min_impressions: int = 1_000
    """Impressions each arm needs before any decision (hold excepted)."""
    min_clicks: int = 30
    """Clicks each arm needs before any decision (hold excepted)."""
    tolerated_drop: float = 0.05
    """Smallest relative CTR drop the test aims at: the mixture's alternatives run from this drop
    to ``MAX_DROP``; drops below it are rarely caught within the budget."""
    promote_impressions: int = DEFAULT_PROMOTE_IMPRESSIONS
    """Canary impressions after which a canary with no evidence against it is promoted."""
    srm_p_value: float = 1e-3
    """Sample-ratio-mismatch threshold: a chi-square p-value below this holds the task."""
    metric: str = "CTR"
    """What the counts' ratio is called in reasons (``CTR`` for clicks, ``play rate`` for plays)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_impressions < 0:
            raise ValueError(f"min_impressions must be >= 0, got {self.min_impressions}")
        if self.min_clicks < 0:
            raise ValueError(f"min_clicks must be >= 0, got {self.min_clicks}")
        if not 0.0 < self.tolerated_drop < MAX_DROP:
            raise ValueError(f"tolerated_drop must be in (0, {MAX_DROP}), got {self.tolerated_drop}")
        if self.promote_impressions < self.min_impressions:
            raise ValueError(
                f"promote_impressions ({self.promote_impressions}) must be >= min_impressions "
                f"({self.min_impressions})"
            )
        if not 0.0 < self.srm_p_value < 1.0:
            raise ValueError(f"srm_p_value must be in (0, 1), got {self.srm_p_value}")


@dataclass(frozen=True)
class ArmCounts:
    """Cumulative impressions and clicks of one arm of one task since the rollout started."""

    impressions: int
    clicks: int

    def __post_init__(self) -> None:
        if self.impressions < 0 or self.clicks < 0:
            raise ValueError(f"counts must be >= 0, got {self}")
        if self.clicks > self.impressions:
            raise ValueError(f"clicks ({self.clicks}) exceed impressions ({self.impressions})")


class Verdict(enum.Enum):
    """What the judge says about one task's canary at one look."""

    CONTINUE = "continue"
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    HOLD = "hold"


@dataclass(frozen=True)
class UserSplit:
    """Distinct users each arm answered at the current share (``share`` in [0, 1]): the sample-ratio
    check's unit where the split is by user (``unirank.server.rollout.srm`` counts them)."""

    canary: int
    stable: int
    share: float

    @property
    def expected_canary(self) -> float:
        return (self.canary + self.stable) * self.share

    @property
    def variance(self) -> float:
        return (self.canary + self.stable) * self.share * (1.0 - self.share)


@dataclass(frozen=True)
class Decision:
    """A verdict with its reason and the evidence behind it."""

    verdict: Verdict
    reason: str
    e_value: float
    srm_p_value: float
    canary: ArmCounts
    stable: ArmCounts


@dataclass(frozen=True)
class JudgeState:
    """Everything the judge remembers, so a restart resumes the same e-process."""

    canary: ArmCounts = ArmCounts(0, 0)
    stable: ArmCounts = ArmCounts(0, 0)
    log_e: tuple[float, ...] = field(default_factory=lambda: (0.0,) * MIXTURE_POINTS)
    """Per alternative, the log of its running likelihood-ratio product."""
    expected_canary: float = 0.0
    """Canary impressions the announced shares predict."""
    expected_var: float = 0.0
    """Variance of the canary's impression count under the announced shares."""
    crossed: bool = False
    """The e-process has reached 1/alpha (rollback is sticky)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "canary": [self.canary.impressions, self.canary.clicks],
            "stable": [self.stable.impressions, self.stable.clicks],
            "log_e": list(self.log_e),
            "expected_canary": self.expected_canary,
            "expected_var": self.expected_var,
            "crossed": self.crossed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> JudgeState:
        canary = _pair(data["canary"])
        stable = _pair(data["stable"])
        log_e = data["log_e"]
        if not isinstance(log_e, list) or len(log_e) != MIXTURE_POINTS:
            raise ValueError(f"log_e must be a list of {MIXTURE_POINTS} floats")
        return cls(
            canary=ArmCounts(*canary),
            stable=ArmCounts(*stable),
            log_e=tuple(float(v) for v in log_e),
            expected_canary=float(_number(data["expected_canary"])),
            expected_var=float(_number(data["expected_var"])),
            crossed=bool(data["crossed"]),
        )


def _pair(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected [impressions, clicks], got {value!r}")
    return int(_number(value[0])), int(_number(value[1]))


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def mixture_ratios(tolerated_drop: float) -> np.ndarray:
    """The alternatives ``rho_j`` (canary CTR / stable CTR), evenly spaced in log."""
    return np.exp(np.linspace(math.log(1.0 - tolerated_drop), math.log(1.0 - MAX_DROP), MIXTURE_POINTS))


def srm_p_value(canary_impressions: int, expected: float, variance: float) -> float:
    """Two-sided p-value of the canary's impression count against the announced shares."""
    if variance <= 0.0:
        return 0.0 if abs(canary_impressions - expected) > 0.5 else 1.0
    chi2 = (canary_impressions - expected) ** 2 / variance
    return math.erfc(math.sqrt(chi2 / 2.0))


class CanaryJudge:
    """The sequential judge of one task's canary; feed it cumulative counts at every look."""

    def __init__(self, knobs: JudgeKnobs, state: JudgeState | None = None) -> None:
        self.knobs = knobs
        self.state = state if state is not None else JudgeState()
        self._ratios = mixture_ratios(knobs.tolerated_drop)
        self._log_weights = np.full(MIXTURE_POINTS, -math.log(MIXTURE_POINTS))

    def e_value(self) -> float:
        """The mixture e-process now (1 at the start; rollback at ``1/alpha``)."""
        log_terms = self._log_weights + np.asarray(self.state.log_e)
        top = float(log_terms.max())
        return math.exp(top) * float(np.exp(log_terms - top).sum())

    def observe(
        self, canary: ArmCounts, stable: ArmCounts, canary_share: float, users: UserSplit | None = None
    ) -> Decision:
        """Absorb the counts since the last look and decide.

        ``canary_share`` is the share of the task's traffic the canary was announced to get over
        this increment (the current rollout step). ``users``: the distinct users each arm answered
        at this share, the sample-ratio check's unit where given (the split is by user); without
        it the check counts impressions as independent.
        """
        if not 0.0 <= canary_share <= 1.0:
            raise ValueError(f"canary_share must be in [0, 1], got {canary_share}")
        prev = self.state
        n_c = canary.impressions - prev.canary.impressions
        n_s = stable.impressions - prev.stable.impressions
        x_c = canary.clicks - prev.canary.clicks
        x_s = stable.clicks - prev.stable.clicks
        if min(n_c, n_s, x_c, x_s) < 0:
            raise ValueError("counts went backwards: the judge takes cumulative counts")
        log_e = np.asarray(prev.log_e)
        if n_c > 0 and n_s > 0 and x_c + x_s > 0:
            w = n_c / (n_c + n_s)
            theta = self._ratios * w / (self._ratios * w + 1.0 - w)
            log_e = log_e + x_c * np.log(theta / w) + x_s * np.log((1.0 - theta) / (1.0 - w))
        total = n_c + n_s
        self.state = JudgeState(
            canary=canary,
            stable=stable,
            log_e=tuple(float(v) for v in log_e),
            expected_canary=prev.expected_canary + total * canary_share,
            expected_var=prev.expected_var + total * canary_share * (1.0 - canary_share),
            crossed=prev.crossed,
        )
        e = self.e_value()
        if e >= 1.0 / self.knobs.alpha and not self.state.crossed:
            self.state = replace(self.state, crossed=True)
        return self._decide(e, users)

    def _decide(self, e: float, users: UserSplit | None) -> Decision:
        knobs, state = self.knobs, self.state
        if users is None:
            unit, observed, expected = "impressions", state.canary.impressions, state.expected_canary
            p_srm = srm_p_value(observed, expected, state.expected_var)
        else:
            unit, observed, expected = "users", users.canary, users.expected_canary
            # At a 0 or 100 % share there is no split to test: the odd user on the other arm is a
            # request routed before the share changed and answered after.
            p_srm = srm_p_value(observed, expected, users.variance) if users.variance > 0 else 1.0

        def decision(verdict: Verdict, reason: str) -> Decision:
            return Decision(verdict, reason, e, p_srm, state.canary, state.stable)

        if p_srm < knobs.srm_p_value:
            return decision(
                Verdict.HOLD,
                f"sample-ratio mismatch: canary got {observed} {unit}, "
                f"{expected:.0f} expected (p={p_srm:.2g} < {knobs.srm_p_value})",
            )
        for arm, counts in (("canary", state.canary), ("stable", state.stable)):
            if counts.impressions < knobs.min_impressions or counts.clicks < knobs.min_clicks:
                return decision(
                    Verdict.CONTINUE,
                    f"{arm} has {counts.impressions} impressions / {counts.clicks} clicks, "
                    f"needs {knobs.min_impressions} / {knobs.min_clicks}",
                )
        if state.crossed:
            return decision(
                Verdict.ROLLBACK,
                f"canary {knobs.metric} is lower: e-value reached 1/alpha = {1.0 / knobs.alpha:.0f} "
                f"(now {e:.3g})",
            )
        if state.canary.impressions >= knobs.promote_impressions:
            return decision(
                Verdict.PROMOTE,
                f"no evidence of a {knobs.metric} drop (e-value {e:.3g} < {1.0 / knobs.alpha:.0f}) after "
                f"{state.canary.impressions} canary impressions (budget {knobs.promote_impressions})",
            )
        return decision(Verdict.CONTINUE, f"e-value {e:.3g} below {1.0 / knobs.alpha:.0f}")
