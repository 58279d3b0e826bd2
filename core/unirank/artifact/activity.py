"""Time-aware item signals at a request's time, defined once for training and serving.

Per candidate item, at the request's time ``t`` (Unix ms), three model inputs (``TIME_FEATURES``):

- **recent popularity**: the item's events strictly before ``t``, each counted ``exp(-(t - t_e) / tau)``
  (``tau`` from the half-life), as ``log1p(count) / recent_norm``;
- **age since first event**: ``exp(-(t - first) / age_scale)`` for the item's first event before
  ``t``, 0 when it has none;
- **age since release**: ``exp(-max(t - release, 0) / age_scale)`` from January 1st (UTC) of the
  item's release year, 0 when the year is unknown.

The decayed count is a fold: after an event at ``t_e`` the count is ``count * exp(-(t_e - last) / tau)
+ 1``. Training reads it at each row's time from every event before that time
(:class:`ActivityHistory`, the state after each event, found by binary search); serving starts from
the artifact's state at the end of the training logs and folds in the online store's events as they
are recorded (:class:`ItemActivity`). Both apply the same step, so the same events give the same
numbers (``tests/training/test_time_feature_parity.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TIME_FEATURES: tuple[str, ...] = ("recent_popularity", "age_since_first_event", "age_since_release")
N_TIME_FEATURES = len(TIME_FEATURES)
ACTIVITY_FILE = "item_activity.npz"
"""The artifact's end-of-training state (optional: artifacts older than the time features lack it)."""
DAY_MS = 86_400_000.0
DEFAULT_HALF_LIFE_DAYS = 30.0
DEFAULT_AGE_SCALE_DAYS = 365.0
DEFAULT_RECENT_NORM = math.log1p(100.0)
"""About 1 for an item with a hundred recent events."""
STALE_AFTER_DAYS = 30.0
"""A state whose newest event is this much older than the clock comes from archived or replayed
logs (a demo, a benchmark, a public data set), not from live traffic: :meth:`ItemActivity.clock_ms`
then reads a request without a time of its own at that newest event. Live traffic never goes a
month without an event."""


@dataclass(frozen=True)
class ActivitySpec:
    """The constants of the time features; stored in the artifact, so serving reads training's."""

    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    """A recent event counts half as much this many days later."""
    age_scale_days: float = DEFAULT_AGE_SCALE_DAYS
    """The age features are ``exp(-age / age_scale)``: 1 for a brand-new item, 0.37 at this age."""
    recent_norm: float = DEFAULT_RECENT_NORM
    """The recent-popularity input is ``log1p(count) / recent_norm``: a constant, not a statistic of
    the data, so no row's input depends on events after its time."""

    def __post_init__(self) -> None:
        if not (self.half_life_days > 0 and self.age_scale_days > 0 and self.recent_norm > 0):
            raise ValueError("half_life_days, age_scale_days and recent_norm must be > 0")

    @property
    def tau_ms(self) -> float:
        return self.half_life_days * DAY_MS / math.log(2.0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def release_times_ms(release_year: np.ndarray) -> np.ndarray:
    """January 1st (UTC) of each release year in Unix ms; NaN where the year is unknown (<= 0)."""
    years = np.asarray(release_year, dtype=np.int64)
    known = years > 0
    # an integer as datetime64[Y] counts years since 1970
    days = (np.where(known, years, 1970) - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    return np.where(known, days.astype(np.int64).astype(np.float64) * DAY_MS, np.nan)


def fold(count: float, last_ms: float, at_ms: float, tau_ms: float) -> tuple[float, float]:
    """The decayed count and its time after one more event at ``at_ms`` (any order: an event older
    than ``last_ms`` adds its decayed weight without moving the state's time back)."""
    if math.isnan(last_ms):
        return 1.0, at_ms
    if at_ms >= last_ms:
        return count * math.exp(-(at_ms - last_ms) / tau_ms) + 1.0, at_ms
    return count + math.exp(-(last_ms - at_ms) / tau_ms), last_ms


def time_features(
    count: np.ndarray,
    last_ms: np.ndarray,
    first_ms: np.ndarray,
    release_ms: np.ndarray,
    at_ms: np.ndarray,
    spec: ActivitySpec,
) -> np.ndarray:
    """float32 [..., N_TIME_FEATURES] from the state (count at ``last_ms``; NaN times: no event, no
    release year) read at ``at_ms`` (broadcast against the state)."""
    shape = np.broadcast_shapes(np.shape(count), np.shape(last_ms), np.shape(release_ms), np.shape(at_ms))
    out = np.empty((*shape, N_TIME_FEATURES), dtype=np.float32)
    scale = spec.age_scale_days * DAY_MS
    # A NaN time (no event, no release year) carries through to NaN, which becomes 0 below.
    with np.errstate(invalid="ignore"):
        decay = np.exp(np.maximum(at_ms - last_ms, 0.0) / -spec.tau_ms)
        out[..., 0] = np.log1p(count * decay) / spec.recent_norm
        out[..., 1] = np.exp(np.maximum(at_ms - first_ms, 0.0) / -scale)
        out[..., 2] = np.exp(np.maximum(at_ms - release_ms, 0.0) / -scale)
    return np.nan_to_num(out, copy=False, nan=0.0)


_COUNT, _LAST, _FIRST, _RELEASE = range(4)
"""Columns of :class:`ItemActivity`'s state table."""


class ItemActivity:
    """Every item's decayed count, its time, and its first event: the serving state.

    Built from the artifact (the state at the end of the training logs), then folded forward with
    each recorded event (:meth:`record`); :meth:`features` reads it at a request's time.

    The state is one float64 table [items, 4] (count, last event, first event, release), so a
    request's candidates are one gather. "None" is an infinity that gives the feature's value for
    it by itself: no last event is +inf (``max(t - inf, 0) = 0``: no decay of a zero count), no
    first event or release year -inf (``exp(-inf) = 0``); the padding item 0 is "none" everywhere.
    So no NaN pass is needed per request, and the numbers are the ones :func:`time_features` gives
    with its NaNs (``tests/server/test_feature_encoder.py``). The NaN form is what the artifact
    stores and :attr:`count`, :attr:`last_ms`, :attr:`first_ms` and :attr:`release_ms` return.
    """

    def __init__(
        self,
        spec: ActivitySpec,
        count: np.ndarray,
        last_ms: np.ndarray,
        first_ms: np.ndarray,
        release_ms: np.ndarray,
    ) -> None:
        n = len(count)
        if not (len(last_ms) == len(first_ms) == len(release_ms) == n):
            raise ValueError("the item activity arrays differ in length")
        self.spec = spec
        state = np.empty((n, 4), dtype=np.float64)
        state[:, _COUNT] = count
        for column, values, none in (
            (_LAST, last_ms, np.inf),
            (_FIRST, first_ms, -np.inf),
            (_RELEASE, release_ms, -np.inf),
        ):
            values = np.asarray(values, dtype=np.float64)
            state[:, column] = np.where(np.isnan(values), none, values)
        state[np.isinf(state[:, _LAST]), _COUNT] = 0.0  # a count without an event counts nothing
        known = state[:, _LAST][np.isfinite(state[:, _LAST])]
        self.newest_ms = float(known.max()) if len(known) else math.nan
        """The newest event in the state (NaN: none)."""
        if n:
            state[0] = (0.0, np.inf, -np.inf, -np.inf)  # the padding item: every feature 0
        self._state = state
        self._neg_scales = -np.array(
            [spec.tau_ms, spec.age_scale_days * DAY_MS, spec.age_scale_days * DAY_MS]
        )

    def _column(self, column: int) -> np.ndarray:
        values = self._state[:, column]
        return np.where(np.isinf(values), np.nan, values)

    @property
    def count(self) -> np.ndarray:
        return self._state[:, _COUNT].copy()

    @property
    def last_ms(self) -> np.ndarray:
        return self._column(_LAST)

    @property
    def first_ms(self) -> np.ndarray:
        return self._column(_FIRST)

    @property
    def release_ms(self) -> np.ndarray:
        return self._column(_RELEASE)

    def clock_ms(self, now_ms: float) -> float:
        """The time a request that states none is read at: ``now_ms``, or the newest event when
        that is more than :data:`STALE_AFTER_DAYS` older (archived logs; otherwise every item's
        recent popularity and age would have decayed to nothing the model ever saw in training,
        the way ``new_release_years`` ends the window at a catalogue's newest year)."""
        if math.isfinite(self.newest_ms) and now_ms - self.newest_ms > STALE_AFTER_DAYS * DAY_MS:
            return self.newest_ms
        return now_ms

    @property
    def n_items(self) -> int:
        return len(self._state)

    def record(self, items: np.ndarray, times_ms: np.ndarray) -> None:
        """Fold events (item indices; 0 and unknown indices are skipped) into the state."""
        tau, state = self.spec.tau_ms, self._state
        for item, at in zip(
            np.asarray(items).tolist(), np.asarray(times_ms, dtype=np.float64).tolist(), strict=True
        ):
            if not 0 < item < self.n_items:
                continue
            row = state[item]
            last = float(row[_LAST])
            row[_COUNT], row[_LAST] = fold(
                float(row[_COUNT]), math.nan if last == math.inf else last, at, tau
            )
            if not at <= self.newest_ms:  # NaN (no event yet) or newer
                self.newest_ms = at
            if at < row[_FIRST] or row[_FIRST] == -math.inf:  # none yet, or earlier
                row[_FIRST] = at

    def features(self, candidates: np.ndarray, at_ms: np.ndarray) -> np.ndarray:
        """float32 [B, N, N_TIME_FEATURES] for candidate indices [B, N] at each row's time [B]."""
        index = np.asarray(candidates)
        state = self._state.take(index, axis=0, mode="clip")  # [..., 4]: one gather, clipped in C
        at = np.asarray(at_ms, dtype=np.float64).reshape(-1, *([1] * index.ndim))
        # The same steps as time_features: exp(max(t - time, 0) / -scale) for the last event, the
        # first and the release (the infinities give 1, 0 and 0 for "none"), then the count.
        out = np.subtract(at, state[..., _LAST:])
        np.maximum(out, 0.0, out=out)
        out /= self._neg_scales
        np.exp(out, out=out)
        out[..., 0] = np.log1p(state[..., _COUNT] * out[..., 0]) / self.spec.recent_norm
        return out.astype(np.float32)

    def copy(self) -> ItemActivity:
        return ItemActivity(self.spec, self.count, self.last_ms, self.first_ms, self.release_ms)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            count=self.count,
            last_ms=self.last_ms,
            first_ms=self.first_ms,
            release_ms=self.release_ms,
            spec=np.array([self.spec.half_life_days, self.spec.age_scale_days, self.spec.recent_norm]),
        )

    @classmethod
    def load(cls, path: Path) -> ItemActivity:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in ("count", "last_ms", "first_ms", "release_ms", "spec") if n not in data]
            if missing:
                raise ValueError(f"{path.name}: missing arrays {missing}")
            half_life, age_scale, norm = (float(v) for v in data["spec"])
            return cls(
                ActivitySpec(half_life, age_scale, norm),
                data["count"],
                data["last_ms"],
                data["first_ms"],
                data["release_ms"],
            )


class ActivityHistory:
    """Every item's events in time order with the decayed count after each: the state strictly
    before any time, for training rows at their own times (no event at or after a row's time is
    ever read)."""

    def __init__(
        self,
        n_items: int,
        items: np.ndarray,
        times_ms: np.ndarray,
        release_ms: np.ndarray,
        half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
        age_scale_days: float = DEFAULT_AGE_SCALE_DAYS,
    ) -> None:
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times_ms, dtype=np.int64)
        keep = (items > 0) & (items < n_items)
        items, times = items[keep], times[keep]
        order = np.lexsort((times, items))
        self.items, self.times = items[order], times[order]
        self.n_items = n_items
        self.release_ms = np.asarray(release_ms, dtype=np.float64)
        self.start = np.searchsorted(self.items, np.arange(n_items + 1), side="left")
        tau = ActivitySpec(half_life_days, age_scale_days).tau_ms
        count = np.empty(len(self.items), dtype=np.float64)
        state, last, previous = 0.0, math.nan, -1
        for k, (item, at) in enumerate(zip(self.items.tolist(), self.times.tolist(), strict=True)):
            if item != previous:
                state, last, previous = 0.0, math.nan, item
            state, last = fold(state, last, float(at), tau)
            count[k] = state
        self.count = count
        self.t0 = int(self.times.min()) if len(self.times) else 0
        self.span = (int(self.times.max()) - self.t0 + 2) if len(self.times) else 2
        if n_items * self.span >= 2**62:
            raise ValueError("too many items over too long a time for the activity index")
        self._keys = self.items * self.span + (self.times - self.t0)
        self.spec = ActivitySpec(half_life_days, age_scale_days)
        has = self.start[1:] > self.start[:-1]
        self.first_ms = np.where(
            has,
            self.times[np.minimum(self.start[:-1], max(len(self.times) - 1, 0))] if len(self.times) else 0.0,
            np.nan,
        )
        """Each item's first event (NaN: none)."""

    def _before(self, candidates: np.ndarray, at_ms: np.ndarray) -> np.ndarray:
        """How many of each candidate's events lie strictly before its row's time."""
        at = np.clip(np.asarray(at_ms, dtype=np.int64) - self.t0, 0, self.span - 1)
        keys = candidates * self.span + at.reshape(-1, *([1] * (candidates.ndim - 1)))
        return np.searchsorted(self._keys, keys, side="left") - self.start[candidates]

    def features(self, candidates: np.ndarray, at_ms: np.ndarray) -> np.ndarray:
        """float32 [B, N, N_TIME_FEATURES] for candidate indices [B, N] (or [1, N], the same for
        every row: cheaper) at each row's time [B]."""
        index = np.clip(np.asarray(candidates, dtype=np.int64), 0, self.n_items - 1)
        before = self._before(index, at_ms)
        seen = before > 0
        last = np.where(seen, self.start[index] + before - 1, 0)
        # the count and time of the last event before the row; NaN time: none (the count is ignored)
        count = self.count[last] if len(self.count) else np.zeros(index.shape)
        last_ms = np.where(seen, self.times[last] if len(self.times) else 0.0, np.nan)
        first_ms = np.where(seen, self.first_ms[index], np.nan)
        at = np.asarray(at_ms, dtype=np.float64).reshape(-1, *([1] * (index.ndim - 1)))
        out = time_features(count, last_ms, first_ms, self.release_ms[index], at, self.spec)
        out[np.broadcast_to(index == 0, out.shape[:-1])] = 0.0
        return out

    def final_state(self) -> ItemActivity:
        """The state after every event: what an artifact ships and a server starts from."""
        n = self.n_items
        count, last_ms, first_ms = np.zeros(n), np.full(n, np.nan), np.full(n, np.nan)
        has = self.start[1:] > self.start[:-1]
        idx = np.flatnonzero(has)
        count[idx] = self.count[self.start[idx + 1] - 1]
        last_ms[idx] = self.times[self.start[idx + 1] - 1]
        first_ms[idx] = self.times[self.start[idx]]
        return ItemActivity(self.spec, count, last_ms, first_ms, self.release_ms)
