"""Issuing impressions and attributing feedback to them: the KPI side of Recommend and RecordEvents."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from unirank.server.config import Profile
from unirank.server.domain import RankResponse
from unirank.server.impressions.base import (
    Feedback,
    Impression,
    ImpressionStore,
    ImpressionStoreError,
    new_impression_id,
)
from unirank.server.telemetry.kpi import STABLE_ARM, KpiCounters
from unirank.server.telemetry.logs import ThrottledLog

log = logging.getLogger(__name__)


class ImpressionTracker:
    """Gives every answer an impression id, remembers it in ``store`` for its use-case's attribution
    window, and credits RecordEvents feedback naming it to its task, model version, arm and position.

    A slow or unreachable store never fails a request: the answer goes out unremembered (its
    feedback later counts as ``unknown_impression``), the feedback counts as ``store_unavailable``.
    """

    def __init__(self, profile: Profile, kpis: KpiCounters, store: ImpressionStore | None) -> None:
        self.kpis = kpis
        self.store = store
        self.profile_name = profile.name
        self._windows_ms = {
            name: int(task.kpi.attribution_window_s * 1000) for name, task in profile.tasks.items()
        }
        self._claim_ttl_ms = max(self._windows_ms.values())
        self._timeout_s = profile.impressions.timeout_ms / 1000.0
        self.store_errors = 0
        self._log = ThrottledLog(log)

    def _timer(self) -> contextlib.AbstractAsyncContextManager[object]:
        store = self.store
        return contextlib.nullcontext() if store is None or store.inline else asyncio.timeout(self._timeout_s)

    async def issue(self, task: str, response: RankResponse, user_id: str, arm: str = STABLE_ARM) -> None:
        """Stamp ``response`` with a fresh impression id, count it and remember what it showed."""
        response.impression_id = impression_id = new_impression_id()
        self.kpis.impression(task, response.model_version, arm)
        if self.store is None:
            return
        now_ms = int(time.time() * 1000)
        impression = Impression(
            task,
            response.model_version,
            self.profile_name,
            arm,
            tuple(item.item_id for item in response.items),
            user_id,
            now_ms,
            now_ms + self._windows_ms[task],
        )
        try:
            async with self._timer():
                await self.store.put(impression_id, impression)
        except (ImpressionStoreError, TimeoutError) as exc:
            self._failed("write", exc)

    async def attribute(self, feedback: Sequence[Feedback]) -> tuple[int, int]:
        """Credit each event to its impression; returns (attributed, unattributed)."""
        if not feedback:
            return 0, 0
        kpis = self.kpis
        found: dict[str, Impression] = {}
        if self.store is not None:
            try:
                async with self._timer():
                    found = await self.store.get_many(list(dict.fromkeys(f.impression_id for f in feedback)))
            except (ImpressionStoreError, TimeoutError) as exc:
                self._failed("read", exc)
                kpis.unattributable("store_unavailable", len(feedback))
                return 0, len(feedback)
        now_ms = time.time() * 1000
        credited: list[tuple[Feedback, Impression, int]] = []
        for event in feedback:
            impression = found.get(event.impression_id)
            if impression is None or impression.expires_ms <= now_ms:
                kpis.unattributable("unknown_impression")
                continue
            # The stored answer, not the caller, says where the item was shown.
            position = impression.position_of(event.item_id)
            if not position:
                kpis.unattributable("item_not_in_answer")
                continue
            credited.append((event, impression, position))
        claims = [event.event_id for event, _, _ in credited if event.event_id]
        fresh: list[bool] = []
        if claims and self.store is not None:
            try:
                async with self._timer():
                    fresh = await self.store.claim(claims, self._claim_ttl_ms)
            except (ImpressionStoreError, TimeoutError) as exc:
                self._failed("claim", exc)
                kpis.unattributable("store_unavailable", len(credited))
                return 0, len(feedback)
        is_new = iter(fresh)
        attributed = 0
        for event, impression, position in credited:
            if event.event_id and not next(is_new):
                kpis.unattributable("duplicate")
                continue
            kpis.attributed(
                impression.task,
                impression.model_version,
                impression.arm,
                event.event_type,
                position,
                event.engagement_seconds,
            )
            attributed += 1
        return attributed, len(feedback) - attributed

    def _failed(self, what: str, exc: Exception) -> None:
        self.store_errors += 1
        detail = exc.detail if isinstance(exc, ImpressionStoreError) else "timeout"
        self._log.warning(what, "impression store %s failed: %s", what, detail)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
