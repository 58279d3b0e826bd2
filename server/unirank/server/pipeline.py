"""The transport-neutral ranking pipeline: cache -> validate -> pre-rules -> retrieve -> score ->
post-rules -> respond, with the use-case's fallback around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from dataclasses import replace

import numpy as np

from unirank.artifact import EncodedContext, TaskType
from unirank.artifact.tasks import TASKS, TaskSpec, task_by_name, task_by_type
from unirank.server.answers import answer, fallback_ranking
from unirank.server.backends.base import BackendError
from unirank.server.batching import BatchingError, DeadlineDropped, QueueFull
from unirank.server.cache import TTLCache
from unirank.server.config import Profile
from unirank.server.domain import (
    AdmissionGate,
    Candidates,
    FallbackReason,
    ModelInfo,
    RankRequest,
    RankResponse,
    RuleContext,
    TaskInfo,
)
from unirank.server.errors import (
    DeadlineExceeded,
    FeatureStoreUnavailable,
    InvalidArgument,
    ModelUnavailable,
    Overloaded,
    ServingError,
    TaskNotServed,
    UnknownEntity,
)
from unirank.server.impressions import (
    Feedback,
    ImpressionTracker,
    InMemoryImpressionStore,
    make_impression_store,
)
from unirank.server.online_store import FeatureStore, FeatureStoreError, RecentEvent, memory_usage
from unirank.server.online_store.item_activity import fold_events
from unirank.server.request_context import (
    cache_key,
    cold_start,
    did_you_mean,
    exclude_requested,
    rule_context,
    with_stored_history,
)
from unirank.server.retrieval import ReleaseWindow
from unirank.server.rollout.router import ArmRouter
from unirank.server.rules import bind_rules
from unirank.server.runtime import ModelRuntime
from unirank.server.task_runtime import TaskRuntime
from unirank.server.telemetry import RequestTrace, Telemetry
from unirank.server.telemetry.kpi import STABLE_ARM, VIEW_EVENT_TYPE
from unirank.server.telemetry.logs import ThrottledLog

log = logging.getLogger(__name__)


class _Fallback(Exception):
    """Internal signal: answer with the use-case's fallback."""

    def __init__(self, reason: FallbackReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RankingPipeline:
    """Ranks one request context at a time against the current model runtime."""

    def __init__(
        self,
        profile: Profile,
        runtime: ModelRuntime,
        telemetry: Telemetry | None = None,
        features: FeatureStore | None = None,
    ) -> None:
        self.profile = profile
        self._runtime = runtime
        self._features = features
        self.feature_store_errors = 0
        self._store_log = ThrottledLog(log)
        self._backend_log = ThrottledLog(log)
        """A broken model fails every request: one line per use-case and interval, with a count."""
        self._telemetry = (
            telemetry if telemetry is not None else Telemetry.disabled(profile.name, profile.tasks)
        )
        self.config_epoch = 0
        self.arms: ArmRouter | None = None
        """Set while canary rollouts are on (``[rollout] enabled``); else every answer is stable's."""
        self.tasks: dict[TaskType, TaskRuntime] = {}
        for name, config in profile.tasks.items():
            spec = task_by_name(name)
            cache = None
            if config.cache.enabled:
                cache = TTLCache[RankResponse](
                    config.cache.max_entries, config.cache.ttl_s, config.cache.max_bytes
                )
                self._telemetry.watch_memory("response_cache", name, cache.usage)
            pre, post = bind_rules(config.rules.pre), bind_rules(config.rules.post)
            self.tasks[spec.task_type] = TaskRuntime(name, spec.head_index, config, pre, post, cache)
        store_usage = memory_usage(features)
        if store_usage is not None:
            self._telemetry.watch_memory("feature_store", "", store_usage)
        impressions = make_impression_store(profile)
        self.impressions = ImpressionTracker(profile, self._telemetry.stats.kpis, impressions)
        """Issues every answer's impression id and attributes RecordEvents feedback to it."""
        if isinstance(impressions, InMemoryImpressionStore):
            self._telemetry.watch_memory("impression_store", "", impressions.usage)

    @property
    def runtime(self) -> ModelRuntime:
        return self._runtime

    def swap_runtime(self, runtime: ModelRuntime) -> ModelRuntime:
        """Install a new model version; returns the old one. Cached answers of the old one die."""
        old, self._runtime = self._runtime, runtime
        for task in self.tasks.values():
            if task.cache is not None:
                task.cache.clear()
        return old

    def task_runtime(self, task: TaskType) -> TaskRuntime:
        runtime = self.tasks.get(task)
        if runtime is None:
            raise TaskNotServed(
                f"profile {self.profile.name!r} does not serve {task_by_type(task).name}; "
                f"it serves {sorted(t.name for t in self.tasks.values())}"
            )
        return runtime

    def serves(self, spec: TaskSpec) -> bool:
        """The profile serves ``spec`` and the model has a trained head for it."""
        return spec.task_type in self.tasks and self._runtime.has_head(spec)

    def model_info(self) -> ModelInfo:
        """The serving version, and per use-case of the registry whether it is served and its
        offline metrics (GetModelInfo)."""
        runtime, artifact = self._runtime, self._runtime.artifact
        task_metrics = artifact.metrics.get("tasks", {})
        return ModelInfo(
            model_version=artifact.model_version,
            schema_version=artifact.schema_version,
            profile=self.profile.name,
            backend=runtime.backend.name,
            device=runtime.backend.device,
            tasks=[
                TaskInfo(
                    task=spec.task_type,
                    served=self.serves(spec),
                    offline_metrics={
                        k: float(v) for k, v in task_metrics.get(spec.name, {}).get("model", {}).items()
                    },
                )
                for spec in TASKS
            ],
            created_unix_ms=int(artifact.manifest.get("created_unix_ms", 0)),
            catalog_size=artifact.catalog.n_items,
        )

    def check_batch_size(self, size: int) -> None:
        """A RecommendBatch of ``size`` members is within the profile's limit (before any member
        is read)."""
        limit = self.profile.server.max_batch_requests
        if size > limit:
            raise InvalidArgument.single("requests", f"{size} requests, at most {limit} per batch")

    async def recommend_batch(
        self, requests: list[RankRequest], deadline: float | None, gate: AdmissionGate
    ) -> list[RankResponse | ServingError]:
        """Every member validated first (a bad one fails the call, by name), then each admitted
        through ``gate`` and ranked on its own: a member's error is its outcome, not the call's."""
        self.check_batch_size(len(requests))
        tasks = [self.check(r, f"requests[{i}].").name for i, r in enumerate(requests)]
        # Only a bug (not a ServingError) fails the call; the task group then cancels the others.
        async with asyncio.TaskGroup() as group:
            members = [
                group.create_task(self._batch_member(r, task, deadline, gate))
                for r, task in zip(requests, tasks, strict=True)
            ]
        return [member.result() for member in members]

    async def _batch_member(
        self, request: RankRequest, task: str, deadline: float | None, gate: AdmissionGate
    ) -> RankResponse | ServingError:
        """One member: admitted on its own slot (deadline-aware, like a call of its own), ranked,
        and its error returned rather than raised so the others are still answered."""
        loop = asyncio.get_running_loop()
        try:
            await gate.enter(task, None if deadline is None else deadline - loop.time())
        except ServingError as error:
            return error
        admitted_at = loop.time()
        try:
            response = await self.recommend(request, deadline)
        except ServingError as error:
            return error
        finally:
            gate.exit()
        gate.served(task, loop.time() - admitted_at)
        return response

    def check(self, request: RankRequest, field_prefix: str = "") -> TaskRuntime:
        """Profile- and model-dependent validation (served task, result limit)."""
        task = self.task_runtime(request.task)
        n_tasks = self._runtime.n_tasks
        if task.head_index >= n_tasks:
            raise TaskNotServed(
                f"model {self._runtime.version} has no head for {task.name}: it was trained with "
                f"{n_tasks} tasks, before {task.name} was added; serve an artifact trained since"
            )
        if not self._runtime.has_head(task_by_type(request.task)):
            raise TaskNotServed(
                f"model {self._runtime.version} has no trained head for {task.name}: its training "
                "data had too few labels for it (unirank info lists the tasks it serves)"
            )
        limit = task.config.max_results_limit
        if request.options.max_results > limit:
            raise InvalidArgument.single(
                f"{field_prefix}options.max_results",
                f"{request.options.max_results} exceeds the limit {limit}",
            )
        return task

    async def recommend(self, request: RankRequest, deadline: float | None = None) -> RankResponse:
        """Rank one request. ``deadline`` is the caller's absolute ``loop.time()`` deadline."""
        task = self.check(request)
        arms = self.arms
        # One version for the whole request, even across a reload; a user keeps one arm.
        user_key = request.context.user_id or request.request_id
        runtime, arm = (self._runtime, STABLE_ARM) if arms is None else arms.route(task.name, user_key)
        runtime.in_flight += 1
        trace = self._telemetry.start_request(task.name, request.request_id, runtime.version)
        started = time.perf_counter()
        try:
            response = await self._recommend(request, task, runtime, deadline, trace)
            response.arm = arm
            await self.impressions.issue(task.name, response, request.context.user_id, arm)
        except BaseException as exc:
            trace.abandon(exc)
            if arms is not None and isinstance(exc, ModelUnavailable | DeadlineExceeded):
                arms.failed(task.name, arm)
            raise
        finally:
            runtime.in_flight -= 1
        trace.finish(response)
        if arms is not None:
            arms.answered(task.name, arm, response.fallback, time.perf_counter() - started, user_key)
        return response

    async def _recommend(
        self,
        request: RankRequest,
        task: TaskRuntime,
        runtime: ModelRuntime,
        deadline: float | None,
        trace: RequestTrace,
    ) -> RankResponse:
        stored_history = False
        if request.context.user_id and not request.context.history_item_ids:
            request, stored_history = with_stored_history(request, runtime)
        if self._features is not None and request.context.user_id:
            with trace.stage("features"):
                request = await self._with_recent_history(request, task)
        window = (
            runtime.retriever.release_window(request.event_time_unix_ms, request.window_years)
            if task.uses_release_window
            else None
        )
        key: Hashable | None = None
        # Caller-supplied candidates make a request unique: caching it would only fill memory.
        if task.cache is not None and not request.options.candidate_item_ids:
            with trace.stage("cache"):
                key = (runtime.version, self.config_epoch, window, cache_key(request))
                cached = task.cache.get(key)
            trace.cache_lookup(cached is not None)
            if cached is not None:
                return replace(
                    cached, request_id=request.request_id, served_from_cache=True, timings=trace.stages
                )
        loop = asyncio.get_running_loop()
        budget_s = task.config.timeout_ms / 1000.0
        if deadline is not None:
            budget_s = min(budget_s, max(0.0, deadline - loop.time()))
        # An inline backend never suspends, so a timer could not interrupt it: set none.
        timer = contextlib.nullcontext() if runtime.backend.inline else asyncio.timeout(budget_s)
        try:
            async with timer:
                response = await self._rank(request, task, runtime, trace, loop.time() + budget_s, window)
        except _Fallback as fallback:
            response = self._fallback(request, task, runtime, fallback.reason, fallback.detail, trace, window)
        except TimeoutError:
            if not task.config.fallback.on_deadline:
                raise DeadlineExceeded(f"{task.name} ran past its {budget_s * 1000:.0f} ms budget") from None
            response = self._fallback(
                request,
                task,
                runtime,
                FallbackReason.DEADLINE,
                f"budget {budget_s * 1000:.0f} ms ran out",
                trace,
                window,
            )
        response.stored_history = stored_history
        if key is not None and task.cache is not None and not response.fallback:
            task.cache.put(key, response)
        return response

    async def _with_recent_history(self, request: RankRequest, task: TaskRuntime) -> RankRequest:
        """The request with the user's fresh engagements from the store appended to its history.

        A slow or unreachable store degrades the request to the history the caller sent.
        """
        assert self._features is not None
        settings = self.profile.features
        since_ms = int(time.time() * 1000 - task.config.freshness.max_feature_age_s * 1000)
        limit = self._runtime.encoder.max_history
        budget_s = settings.timeout_ms / 1000.0
        timer = contextlib.nullcontext() if self._features.inline else asyncio.timeout(budget_s)
        try:
            async with timer:
                recent = await self._features.recent(request.context.user_id, limit, since_ms)
        except (FeatureStoreError, TimeoutError) as exc:
            self.feature_store_errors += 1
            detail = exc.detail if isinstance(exc, FeatureStoreError) else "timeout"
            self._store_log.warning(
                "read", "feature store unavailable, serving without fresh history: %s", detail
            )
            return request
        if not recent:
            return request
        # Caller history first, store events after (they are the freshest); the latest copy wins.
        merged = list(dict.fromkeys(reversed((*request.context.history_item_ids, *recent))))[::-1]
        return replace(request, context=replace(request.context, history_item_ids=tuple(merged)))

    async def record_events(
        self, events: list[RecentEvent], feedback: list[Feedback] | None = None
    ) -> tuple[int, int, int, int]:
        """Attribute ``feedback`` (the events naming an impression) to the answers they are about,
        then store events about known items (impression events are no engagement: never stored).
        Returns (accepted, ignored, attributed, unattributed)."""
        if self._features is None and not feedback:
            raise TaskNotServed(
                f"profile {self.profile.name!r} has no online feature store ([features] store)"
            )
        attributed, unattributed = await self.impressions.attribute(feedback or [])
        items = self._runtime.encoder.catalog.items
        known = [e for e in events if e.item_id in items and e.event_type != VIEW_EVENT_TYPE]
        unknown = sum(1 for e in events if e.item_id not in items)
        if known and self._features is not None:
            try:
                await self._features.append(known)
            except FeatureStoreError as exc:
                self.feature_store_errors += 1
                self._store_log.warning("write", "RecordEvents failed: %s", exc.detail)
                # str(exc) names no address or path: the detail stays in the server's log.
                raise FeatureStoreUnavailable(str(exc)) from exc
            activity = self._runtime.encoder.activity
            if activity is not None:  # the time features' recent popularity and item age
                fold_events(activity, items, known)
        accepted = len(known) if self._features is not None else 0
        return accepted, unknown, attributed, unattributed

    async def _rank(
        self,
        request: RankRequest,
        task: TaskRuntime,
        runtime: ModelRuntime,
        trace: RequestTrace,
        deadline: float,
        window: ReleaseWindow | None,
    ) -> RankResponse:
        config = task.config
        with trace.stage("encode"):
            encoded = runtime.encoder.encode(request.context)
            cold = cold_start(request.task, encoded)
            if cold:
                cold += did_you_mean(request.context, encoded, runtime.encoder.catalog)
        if cold and config.fallback.on_cold_start:
            raise _Fallback(FallbackReason.COLD_START, cold)
        rule_ctx = rule_context(runtime, encoded)
        with trace.stage("retrieval"):
            candidates = self._retrieve(request, task, runtime, encoded, window)
        with trace.stage("pre_rules"):
            candidates = self._pre_rules(request, task, runtime, candidates, rule_ctx)
        if not len(candidates):
            raise _Fallback(FallbackReason.NO_CANDIDATES, "no candidate survived retrieval and pre-rules")
        failure: BackendError | BatchingError | None = None
        with trace.stage("inference"):
            # Time features are read at the request's own time (0: now), as training read them.
            at_ms = request.event_time_unix_ms or None
            inputs = runtime.encoder.batch([encoded], candidates.items[None, :], at_ms)
            try:
                scores = (await runtime.backend.score(inputs, deadline, tag=trace.batch_member()))[0]
            except QueueFull as exc:
                raise Overloaded(f"model queue full: {exc}") from exc
            except DeadlineDropped as exc:
                # Overload, not a broken model: answered (and counted) as the deadline it is.
                trace.stage_failed(exc)
                raise TimeoutError(str(exc)) from exc
            except (BackendError, BatchingError) as exc:
                if not config.fallback.on_backend_error:
                    raise ModelUnavailable(f"scoring failed: {exc}") from exc
                trace.stage_failed(exc)
                failure = exc
        if failure is not None:
            self._backend_log.warning(task.name, "backend error on %s: %s", task.name, failure)
            raise _Fallback(FallbackReason.BACKEND_ERROR, str(failure)) from failure
        with trace.stage("post_rules"):
            order = np.argsort(-scores, kind="stable")
            ranked = Candidates(candidates.items[order], candidates.sources[order], scores[order])
            trace.scored(len(scores), float(scores[order[0]]))
            for rule in task.post_rules:
                ranked = rule(ranked, rule_ctx)
        return answer(request, task, runtime, ranked, self.profile.name, trace.stages)

    @staticmethod
    def _retrieve(
        request: RankRequest,
        task: TaskRuntime,
        runtime: ModelRuntime,
        encoded: EncodedContext,
        window: ReleaseWindow | None,
    ) -> Candidates:
        """The caller's candidates, else what the task's retrieval finds."""
        retrieval = task.config.retrieval
        if request.options.candidate_item_ids:
            known = runtime.encoder.catalog.items.known_indices(request.options.candidate_item_ids)
            return runtime.retriever.caller_candidates(known, retrieval.max_candidates)
        return runtime.retriever.retrieve(encoded, retrieval, window)

    def _pre_rules(
        self,
        request: RankRequest,
        task: TaskRuntime,
        runtime: ModelRuntime,
        candidates: Candidates,
        rule_ctx: RuleContext,
    ) -> Candidates:
        candidates = exclude_requested(request, runtime, candidates)
        for rule in task.pre_rules:
            candidates = rule(candidates, rule_ctx)
        return candidates

    def candidates_for(
        self, request: RankRequest, task: TaskRuntime, runtime: ModelRuntime, window: ReleaseWindow | None
    ) -> tuple[EncodedContext, Candidates] | None:
        """What ``runtime`` would score for ``request`` of ``task``: its encoded context and the
        candidates retrieval and pre-rules leave; None where the request is a cold start."""
        encoded = runtime.encoder.encode(request.context)
        if cold_start(request.task, encoded):
            return None
        candidates = self._retrieve(request, task, runtime, encoded, window)
        return encoded, self._pre_rules(request, task, runtime, candidates, rule_context(runtime, encoded))

    def _fallback(
        self,
        request: RankRequest,
        task: TaskRuntime,
        runtime: ModelRuntime,
        reason: FallbackReason,
        detail: str,
        trace: RequestTrace,
        window: ReleaseWindow | None,
    ) -> RankResponse:
        strategy = task.config.fallback.strategy
        log.debug("%s answered by its %r fallback (%s): %s", task.name, strategy, reason.name.lower(), detail)
        if strategy == "error":
            if reason is FallbackReason.COLD_START:
                raise UnknownEntity(detail)
            if reason is FallbackReason.DEADLINE:
                raise DeadlineExceeded(detail)
            raise ModelUnavailable(detail)
        with trace.stage("fallback"):
            ranked = fallback_ranking(request, task, runtime, window)
        response = answer(request, task, runtime, ranked, self.profile.name, trace.stages)
        response.fallback_reason = reason
        response.fallback_detail = detail
        return response
