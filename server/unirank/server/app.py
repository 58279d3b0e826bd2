"""The composition root: builds and runs one UniRank server from a profile and an artifact."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from unirank.artifact.store import ArtifactError, IncompleteArtifact
from unirank.server.admission import Admission, OpenCalls
from unirank.server.codec import RequestLimits
from unirank.server.config import Profile
from unirank.server.gate import OfflineGate
from unirank.server.interceptors import ErrorInterceptor
from unirank.server.online_store import FeatureStore, LoggedFeatureStore, make_feature_store
from unirank.server.pipeline import RankingPipeline
from unirank.server.reference import (
    CHECK_REQUESTS,
    REFERENCE_REQUESTS,
    measured_tasks,
    references_of,
    top_scores,
)
from unirank.server.repository import Fingerprint, check_same_family, fingerprint, resolve_artifact
from unirank.server.retrieval import check_item_index
from unirank.server.rollout.controller import RolloutController
from unirank.server.runtime import ModelRuntime
from unirank.server.security import Authenticator, TlsCredentials
from unirank.server.service import RecommenderServicer
from unirank.server.telemetry import ScoreReference, Telemetry
from unirank.server.telemetry.workers import publish_stats
from unirank.server.transport import FirstMessageGuard, server_options
from unirank.server.workers import WorkerGroup, watch_group_health
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
INCOMPLETE_RETRY_S = 1.0
"""Without polling, how often an incomplete version (a copy in progress) is tried again."""
DRAIN_QUIET_TURNS = 5
"""On stop, this many 10 ms turns of the event loop in a row without an RPC reaching admission
means no more are on their way."""


def _can_listen(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (SO_REUSEADDR, as gRPC binds)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


class BindError(OSError):
    """The server's address cannot be listened on (start-up fails with one line, exit 3)."""


class UniRankServer:
    """One process serving one profile. ``start`` returns once health says SERVING.

    ``telemetry`` defaults to the profile's ``[telemetry]`` section resolved against the OTEL_*
    environment variables; tests pass one built with in-memory exporters.
    """

    def __init__(
        self,
        profile: Profile,
        artifact_path: str | Path,
        host: str | None = None,
        port: int | None = None,
        *,
        telemetry: Telemetry | None = None,
        features: FeatureStore | None = None,
        group: WorkerGroup | None = None,
    ):
        self.profile = profile
        self._telemetry = telemetry
        self.artifact_path = Path(artifact_path)
        self.host = host if host is not None else profile.server.host
        self.requested_port = port if port is not None else profile.server.port
        self.port = 0
        limits = profile.server
        self.admission = Admission(
            limits.max_concurrent_rpcs, limits.max_queued_rpcs, limits.max_queue_wait_ms / 1000.0
        )
        self.calls = OpenCalls()
        """Calls open in the server (the transport counts them): a model call made alone runs inline."""
        self.health = health.aio.HealthServicer()
        self.pipeline: RankingPipeline | None = None
        self.gate: OfflineGate | None = None  # built with the telemetry, in start()
        self.rollout: RolloutController | None = None  # [rollout] enabled: canaries per use-case
        self._server: grpc.aio.Server | None = None
        self._loaded: Fingerprint | None = None
        self._rejected: Fingerprint | None = None
        self._incomplete_since: dict[str, float] = {}
        """Versions found incomplete (listed files missing) and when first: retried until complete
        or ``[model] incomplete_version_timeout_s`` has passed."""
        self._retrying = False
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._reference_ready: asyncio.Task[None] | None = None
        """Measuring the started version's drift reference, after SERVING (:meth:`drift_reference_ready`)."""
        self.reloads = 0
        self.reload_failures = 0
        self.poll_errors = 0
        self.features: FeatureStore | None = features
        self.group = group
        self.tls: TlsCredentials | None = None
        self.first_message: FirstMessageGuard | None = None
        self.auth: Authenticator | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def telemetry(self) -> Telemetry:
        if self._telemetry is None:
            # Built here rather than in __init__: exporters start threads and bind ports.
            self._telemetry = Telemetry.create(self.profile)
        return self._telemetry

    def _announce(self, runtime: ModelRuntime, references: dict[str, ScoreReference]) -> None:
        """Telemetry labels the new version and measures drift against its reference."""
        self.telemetry.set_model(runtime.version, runtime.backend.name, runtime.backend.device, references)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            if self._telemetry is not None:  # a refused start must not leave an exporter running
                await asyncio.to_thread(self._telemetry.shutdown)
            raise

    async def _start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Certificates and tokens first: a bad one fails the start before the artifact loads.
        self.tls = TlsCredentials.create(self.profile.security)
        credentials = self.tls.credentials if self.tls is not None else None
        auth = self.auth = Authenticator.create(self.profile.security, os.environ)
        if auth is not None and credentials is None:
            log.warning("bearer tokens over plaintext: set [security] tls_cert_file unless TLS ends in front")
        telemetry = self.telemetry
        self.gate = OfflineGate(self.profile, telemetry)
        version_dir = resolve_artifact(self.artifact_path)
        try:
            stamp = fingerprint(version_dir)
        except OSError as exc:  # removed or unreadable since it was found
            raise ArtifactError(f"{version_dir}: {exc}") from exc
        runtime = await ModelRuntime.load(
            version_dir, self.profile.model, telemetry.batch_observer, self.calls.alone
        )
        self._check_fits(runtime, None)
        self._loaded = stamp
        if self.features is None:
            self.features = make_feature_store(self.profile.features)
        self.pipeline = RankingPipeline(self.profile, runtime, telemetry, self.features)
        if self.profile.rollout.enabled:  # resumed: the versions its saved state serves are loaded
            observer = telemetry.batch_observer
            load = functools.partial(
                ModelRuntime.load, section=self.profile.model, batch_observer=observer, alone=self.calls.alone
            )
            rollout = self.rollout = await RolloutController.open(
                self.artifact_path, self.pipeline, version_dir, telemetry.stats.kpis, load
            )
            rollout.on_finished, rollout.reload = self._rollout_finished, self.reload
            self._loaded = stamp if runtime.version in rollout.runtimes else None  # else: it waits
            runtime = rollout.default
        # The served drift reference scores a thousand requests (5 CPU seconds at a million items):
        # the first few per use-case now, the rest after SERVING; until then those use-cases
        # measure no drift.
        checked = await self._check_references(runtime)
        self._announce(runtime, self._references_before_measured(runtime))
        limits = self.profile.server
        self.first_message = FirstMessageGuard(
            limits.connections.first_message_timeout_ms / 1000.0, self.calls
        )
        server = grpc.aio.server(
            interceptors=[
                self.first_message,
                ErrorInterceptor(
                    self.admission, telemetry, limits=RequestLimits.from_server(limits), auth=auth
                ),
            ],
            options=server_options(limits, reuse_port=self.group is not None),
            maximum_concurrent_rpcs=limits.max_open_rpcs,
        )
        servicer = RecommenderServicer(
            self.pipeline,
            telemetry,
            self.admission,
            peers=self.group.stats_exchange() if self.group is not None else None,
            rollout=self.rollout,
            gate=self.gate,
        )
        pb_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if limits.reflection:
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        bind = f"{self.host}:{self.requested_port}"
        if self.group is None and self.requested_port and not _can_listen(self.host, self.requested_port):
            # Asked first, so the caller reads one line instead of gRPC core's log of the failure.
            raise BindError(f"cannot listen on {bind}: the port is in use or the address is not this host's")
        try:
            self.port = (
                server.add_insecure_port(bind)
                if credentials is None
                else server.add_secure_port(bind, credentials)
            )
        except RuntimeError:  # grpc's "Failed to bind ...; set GRPC_VERBOSITY=debug ..."
            self.port = 0
        if self.port == 0:
            raise BindError(f"cannot listen on {bind}: the port is in use or the address is not this host's")
        telemetry.set_server_address(self.host, self.port)
        await server.start()
        self._server = server
        # A server whose event log cannot be written is not ready (it would refuse RecordEvents).
        features = self.features
        ready = await features.watch(self._set_ready) if isinstance(features, LoggedFeatureStore) else True
        if self.group is None:
            await self._set_serving(ready)
        else:
            self.group.set_ready(ready)
            self._spawn(watch_group_health(self.group, self._set_serving))
            exchange = self.group.stats_exchange()
            if exchange is not None:
                self._spawn(publish_stats(exchange, servicer.own_stats))
        interval = self._poll_interval()
        if interval > 0:
            self._spawn(self._poll_artifacts(interval))
        if self.rollout is not None:
            self._spawn(self.rollout.run(self.profile.rollout.judge_interval_s))
        self._reference_ready = self._spawn(self._measure_references(runtime, checked))
        log.info("serving profile %s, model %s on %s", self.profile.name, runtime.version, self.address)

    async def drift_reference_ready(self) -> None:
        """Returns once the drift reference of the version started with is measured (or given up)."""
        if self._reference_ready is not None:
            await asyncio.shield(self._reference_ready)

    async def _check_references(self, runtime: ModelRuntime) -> dict[str, list[float]] | None:
        """The first :data:`CHECK_REQUESTS` top scores per use-case of the served drift reference,
        scored before SERVING (a graph that fails on requests like its traffic is refused); None
        where the reference is the artifact's offline one."""
        if self.profile.telemetry.drift_reference == "offline":
            return None
        assert self.pipeline is not None
        return await top_scores(self.pipeline, runtime, 0, CHECK_REQUESTS)

    async def _measure_references(
        self, runtime: ModelRuntime, checked: dict[str, list[float]] | None
    ) -> None:
        """The served drift reference of the version started with, its remaining requests scored
        while it serves; set unless another version took over meanwhile (which brought its own,
        measured before its swap)."""
        if checked is None or self.pipeline is None:
            return
        started = asyncio.get_running_loop().time()
        try:
            rest = await top_scores(self.pipeline, runtime, CHECK_REQUESTS, REFERENCE_REQUESTS)
        except Exception:
            log.exception("drift reference not measured; drift stays off for the served use-cases")
            return
        tops = {name: checked.get(name, []) + scores for name, scores in rest.items()}
        if self.pipeline.runtime is runtime:
            offline = ScoreReference.from_metrics(runtime.artifact.metrics)
            self.telemetry.set_references({**offline, **references_of(tops)})
            elapsed = asyncio.get_running_loop().time() - started
            log.info("drift reference of %s measured in %.1f s", runtime.version, elapsed)

    async def _set_serving(self, serving: bool) -> None:
        if not self.admission.draining:
            await self._set_health(
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )

    async def _set_ready(self, ready: bool) -> None:
        """The event log's writability changed: this server's (or worker's) readiness follows it."""
        if self.group is not None:
            self.group.set_ready(ready)
        else:
            await self._set_serving(ready)

    async def _rollout_finished(self, default: ModelRuntime, unused: list[ModelRuntime]) -> None:
        """A rollout ended: the version most use-cases now keep serves by default, the others retire."""
        assert self.pipeline is not None
        if default is not self.pipeline.runtime:
            self.pipeline.swap_runtime(default)
            self._announce(default, await self._references(default))
        for runtime in unused:
            self._spawn(self._retire(runtime))

    def _poll_interval(self) -> float:
        return self.profile.model.artifact_poll_interval_s

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _poll_artifacts(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._reload_quietly()

    async def _reload_quietly(self) -> None:
        """One reload attempt for the poller: whatever happens, it is logged and counted, the
        current version keeps serving and the poller lives on to see the next version."""
        try:
            await self.reload()
        except ArtifactError:
            pass  # logged and counted by reload
        except Exception:
            self.poll_errors += 1
            self.telemetry.count_reload("poll_error")
            log.exception("artifact poll failed; still serving %s", self._serving_version())

    def _serving_version(self) -> str:
        return self.pipeline.runtime.version if self.pipeline is not None else "nothing"

    async def reload(self, path: str | Path | None = None) -> str:
        """Load the newest version off the hot path, swap atomically, retire the old one.

        In-flight requests finish on the version they started with. Everything about the new
        version is read and checked (listing, files, manifest, metrics, warm-up) before the swap;
        a version that fails is refused (ArtifactError) and the current one keeps serving. A
        version whose manifest lists files not there yet is retried until it is complete or
        ``[model] incomplete_version_timeout_s`` passes; one that changes or vanishes while read is
        tried again as it is next found.
        """
        assert self.pipeline is not None, "reload() before start()"
        async with self._reload_lock:
            try:
                target = resolve_artifact(path if path is not None else self.artifact_path)
                stamp = fingerprint(target)
            except OSError as exc:  # a version directory renamed or removed while listed
                self.telemetry.count_reload("unreadable")
                log.warning(
                    "cannot list artifact versions: %s; still serving %s", exc, self._serving_version()
                )
                raise ArtifactError(f"cannot list artifact versions: {exc}") from exc
            except ArtifactError:
                self.telemetry.count_reload("unreadable")
                raise
            if stamp == self._loaded or stamp == self._rejected:
                return self.pipeline.runtime.version
            rollout = self.rollout
            if rollout is not None and (rollout.active or rollout.is_last_canary(target)):
                return self.pipeline.runtime.version  # one rollout at a time, each version once
            try:
                runtime = await ModelRuntime.load(
                    target, self.profile.model, self.telemetry.batch_observer, self.calls.alone
                )
                try:
                    self._check_fits(runtime, self.pipeline.runtime)
                    pinned = self.rollout.serving_runtimes() if self.rollout is not None else {}
                    assert self.gate is not None
                    await self.gate.check(runtime, self.pipeline.runtime, pinned)
                    references = await self._references(runtime)
                except Exception:
                    await runtime.close()  # refused after loading: its backend must not linger
                    raise
            except Exception as exc:
                raise self._refuse(target, stamp, exc) from exc
            self._incomplete_since.clear()  # the newest version loaded: none older is waited for
            self._loaded = stamp
            if rollout is not None:
                rollout.begin(runtime, target)
                self.reloads += 1
                self.telemetry.count_reload("canary")
                return runtime.version
            old = self.pipeline.swap_runtime(runtime)
            self._announce(runtime, references)
            self.reloads += 1
            self.telemetry.count_reload("loaded")
            log.info("reloaded: %s -> %s", old.version, runtime.version)
            self._spawn(self._retire(old))
            return runtime.version

    def _references_before_measured(self, runtime: ModelRuntime) -> dict[str, ScoreReference]:
        """The offline references of the use-cases :meth:`_references` will not measure on served
        candidate sets: all of them when ``[telemetry] drift_reference`` is offline."""
        offline = ScoreReference.from_metrics(runtime.artifact.metrics)
        if self.profile.telemetry.drift_reference == "offline":
            return offline
        assert self.pipeline is not None
        measured = {task.name for _, task in measured_tasks(self.pipeline, runtime)}
        return {name: reference for name, reference in offline.items() if name not in measured}

    async def _references(self, runtime: ModelRuntime) -> dict[str, ScoreReference]:
        """The drift references of ``runtime`` (``[telemetry] drift_reference``): measured on this
        profile's served candidate sets, the artifact's offline ones where that is off or impossible."""
        offline = ScoreReference.from_metrics(runtime.artifact.metrics)
        if self.profile.telemetry.drift_reference == "offline":
            return offline
        assert self.pipeline is not None
        return {**offline, **references_of(await top_scores(self.pipeline, runtime))}

    def _check_fits(self, runtime: ModelRuntime, serving: ModelRuntime | None) -> None:
        """Refuse a version this profile cannot serve as configured, or (on a reload, unless the
        profile allows it) one of another model family or catalogue than ``serving`` (ArtifactError)."""
        configs = [task.retrieval for task in self.profile.tasks.values()]
        check_item_index(configs, runtime.retriever, runtime.version)
        if serving is not None and not self.profile.model.allow_catalog_change:
            check_same_family(serving.artifact, runtime.artifact)

    def _refuse(self, target: Path, stamp: Fingerprint, exc: Exception) -> ArtifactError:
        """Log and count a version that could not be loaded; the error to raise.

        A version that is incomplete (files listed but not there) or changed while it was read is
        a copy in progress: retried until ``[model] incomplete_version_timeout_s`` has passed. One
        that vanished is forgotten. Anything else is refused until its files change.
        """
        error = exc if isinstance(exc, ArtifactError) else ArtifactError(f"{target}: {exc}")
        current = self._serving_version()
        try:
            unchanged = fingerprint(target) == stamp
        except OSError:  # renamed or removed while it was read
            self.telemetry.count_reload("unreadable")
            log.warning("version %s vanished while loading (%s); still serving %s", target, exc, current)
            return error
        key = stamp[0]
        if not unchanged or isinstance(exc, IncompleteArtifact):
            now = asyncio.get_running_loop().time()
            since = self._incomplete_since.setdefault(key, now)
            timeout = self.profile.model.incomplete_version_timeout_s
            if now - since < timeout:
                self.telemetry.count_reload("incomplete")
                if since == now:
                    log.info("version %s is incomplete (%s); retrying for up to %.0f s", target, exc, timeout)
                self._retry_incomplete()
                return error
            error = ArtifactError(f"{exc}; still after {timeout:.0f} s (model.incomplete_version_timeout_s)")
        self._incomplete_since.pop(key, None)
        self._rejected = stamp
        self.reload_failures += 1
        self.telemetry.count_reload("refused")
        log.error("refused artifact: %s; still serving %s", error, current)
        return error

    def _retry_incomplete(self) -> None:
        """Without a poller, try an incomplete version again until it loads or is refused."""
        if self._retrying or self._poll_interval() > 0:
            return
        self._retrying = True

        async def retry() -> None:
            try:
                while self._incomplete_since:
                    await asyncio.sleep(INCOMPLETE_RETRY_S)
                    # Versions removed meanwhile are not waited for.
                    self._incomplete_since = {
                        path: since for path, since in self._incomplete_since.items() if Path(path).is_dir()
                    }
                    await self._reload_quietly()
            finally:
                self._retrying = False

        self._spawn(retry())

    def reload_secrets(self) -> list[str]:
        """Re-read the TLS certificates and bearer tokens the profile names (rotation, on SIGHUP).

        Each is checked before it replaces the current one; a file that cannot be read or parsed
        raises SecurityError and what was in force stays in force. Returns what was rotated.
        """
        rotated: list[str] = []
        if self.tls is not None:
            self.tls.reload()
            rotated.append("tls")
        if self.auth is not None:
            self.auth.reload(os.environ)
            rotated.append("tokens")
        return rotated

    @staticmethod
    async def _retire(runtime: ModelRuntime) -> None:
        while runtime.in_flight > 0:
            await asyncio.sleep(0.01)
        await runtime.close()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight ones finish within the grace period."""
        grace = self.profile.server.grace_period_s if grace_s is None else grace_s
        self.admission.drain()
        if self.group is not None:
            self.group.set_ready(False)
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        # Wait for the admitted requests, then for arrivals to stop: calls gRPC still holds
        # unread when the server stops are cancelled by gRPC core (CANCELLED), while calls that
        # reach admission now are refused with DRAINING and RetryInfo, which clients retry elsewhere.
        # Quiet means several loop turns in a row without one, not a stretch of wall time (a
        # process starved of CPU sees no arrivals either).
        seen, quiet_turns = -1, 0
        while quiet_turns < DRAIN_QUIET_TURNS and loop.time() < until:
            await asyncio.sleep(0.01)
            busy = self.admission.in_flight > 0 or self.admission.arrivals != seen
            quiet_turns = 0 if busy else quiet_turns + 1
            seen = self.admission.arrivals
        for task in list(self._background):
            task.cancel()
        if self._server is not None:
            await self._server.stop(max(0.0, until - loop.time()))
        if self.pipeline is not None:
            await self.pipeline.runtime.close()
            if self.rollout is not None:
                await self.rollout.close(keep=self.pipeline.runtime)
            await self.pipeline.impressions.close()
        if self.features is not None:
            await self.features.close()
        if self._telemetry is not None:
            # Off the loop: flushing exporters may block on the network.
            await asyncio.to_thread(self._telemetry.shutdown)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
