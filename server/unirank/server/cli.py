"""``unirank serve``: run one server process for a profile and an artifact."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import socket
import sys

from unirank.artifact import ArtifactError
from unirank.server.app import BindError, UniRankServer
from unirank.server.backends.base import BackendError
from unirank.server.config import Profile, ProfileError, load_profile
from unirank.server.security import SecurityError
from unirank.server.telemetry import Telemetry, TelemetrySettingsError, resolve
from unirank.server.telemetry.logs import configure_logging
from unirank.server.workers import WorkerGroup, supervise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unirank serve", description="Serve an artifact under a profile.")
    parser.add_argument("--profile", required=True, help="deployment profile TOML (profiles/*.toml)")
    parser.add_argument(
        "--artifact",
        required=True,
        help="artifact directory written by `unirank train`, or a repository of version directories",
    )
    parser.add_argument("--host", default=None, help="override the profile's server.host")
    parser.add_argument("--port", type=int, default=None, help="override the profile's server.port")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT); a supervisor restarts any that dies",
    )
    telemetry = parser.add_argument_group(
        "telemetry", "override the profile's [telemetry] section and the OTEL_* variables"
    )
    telemetry.add_argument("--log-format", choices=("text", "json"), default=None)
    telemetry.add_argument("--traces-exporter", choices=("none", "console", "otlp"), default=None)
    telemetry.add_argument(
        "--metrics-exporter", choices=("none", "console", "otlp", "prometheus"), default=None
    )
    telemetry.add_argument("--sampling-ratio", type=float, default=None, metavar="R", help="0.0 to 1.0")
    telemetry.add_argument("--prometheus-port", type=int, default=None, metavar="PORT")
    return parser


async def _serve(server: UniRankServer) -> None:
    await server.start()
    print(f"unirank: serving {server.profile.name} on {server.address}", flush=True)
    prometheus = server.telemetry.prometheus
    if prometheus is not None:
        print(f"unirank: metrics on http://{prometheus.host}:{prometheus.port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(server)))
    await stop.wait()
    logging.getLogger(__name__).info("signal received: draining")
    await server.stop()


async def _reload(server: UniRankServer) -> None:
    """SIGHUP: rotate certificates and tokens, then look for a new model version."""
    try:
        rotated = server.reload_secrets()
        if rotated:
            print(f"unirank: re-read {' and '.join(rotated)}", flush=True)
    except SecurityError as exc:
        print(
            f"unirank: secrets reload refused, the current ones stay in force: {exc}",
            file=sys.stderr,
            flush=True,
        )
    try:
        version = await server.reload()
        print(f"unirank: serving model {version}", flush=True)
    except ArtifactError as exc:
        print(f"unirank: reload refused: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:])
    if args.workers < 1:
        print("unirank serve: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"unirank serve: invalid profile\n{exc}", file=sys.stderr)
        return 2
    if args.workers > 1 and profile.rollout.enabled:
        # Each worker would judge a share of the traffic and write the one state file.
        print("unirank serve: [rollout] enabled needs one process (leave out --workers)", file=sys.stderr)
        return 2
    if args.workers > 1:
        configure_logging(args.log_level, "text")
        port = args.port if args.port is not None else profile.server.port
        if port == 0:  # every worker must bind the same concrete port
            port = _free_port(args.host or profile.server.host)
        worker_argv = [*argv, "--port", str(port)]
        metrics = None
        try:
            settings = resolve(profile.telemetry, os.environ, _telemetry_flags(args))
        except TelemetrySettingsError as exc:
            print(f"unirank serve: invalid telemetry settings\n{exc}", file=sys.stderr)
            return 2
        if settings.metrics_exporter == "prometheus":
            # One endpoint for the group: the supervisor serves it; each worker exports on a port of
            # its own (0: the kernel picks) and the supervisor merges them on every scrape.
            metrics = (settings.prometheus_host, settings.prometheus_port)
            worker_argv += ["--prometheus-port", "0"]
        print(f"unirank: {args.workers} workers on port {port}", flush=True)
        try:
            return supervise(
                functools.partial(_run_worker, worker_argv),
                args.workers,
                profile.server.grace_period_s,
                metrics=metrics,
            )
        except OSError as exc:  # the Prometheus port is taken
            print(f"unirank serve: cannot serve metrics: {exc}", file=sys.stderr)
            return 3
    return _run(args, profile, None)


def _telemetry_flags(args: argparse.Namespace) -> dict[str, object]:
    return {
        "log_format": args.log_format,
        "traces_exporter": args.traces_exporter,
        "metrics_exporter": args.metrics_exporter,
        "sampling_ratio": args.sampling_ratio,
        "prometheus_port": args.prometheus_port,
    }


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_worker(argv: list[str], group: WorkerGroup) -> int:
    args = _parser().parse_args(argv[1:])
    profile = load_profile(args.profile)
    return _run(args, profile, group)


def _run(args: argparse.Namespace, profile: Profile, group: WorkerGroup | None) -> int:
    try:
        # Precedence: the profile file < OTEL_* environment variables < these flags.
        settings = resolve(profile.telemetry, os.environ, _telemetry_flags(args))
    except TelemetrySettingsError as exc:
        print(f"unirank serve: invalid telemetry settings\n{exc}", file=sys.stderr)
        return 2
    profile = profile.model_copy(update={"telemetry": settings})
    configure_logging(args.log_level, settings.log_format)
    try:
        telemetry = Telemetry.create(profile, settings)
    except OSError as exc:  # e.g. the Prometheus port is taken
        print(f"unirank serve: cannot start telemetry: {exc}", file=sys.stderr)
        return 3
    if group is not None and telemetry.prometheus is not None:
        group.set_metrics_port(telemetry.prometheus.port)
    server = UniRankServer(
        profile, args.artifact, host=args.host, port=args.port, telemetry=telemetry, group=group
    )
    try:
        asyncio.run(_serve(server))
    except ArtifactError as exc:
        print(f"unirank serve: refusing artifact: {exc}", file=sys.stderr)
        return 3
    except BackendError as exc:
        print(f"unirank serve: cannot start the model backend: {exc}", file=sys.stderr)
        return 3
    except SecurityError as exc:
        print(f"unirank serve: invalid security settings: {exc}", file=sys.stderr)
        return 3
    except BindError as exc:
        print(f"unirank serve: {exc}", file=sys.stderr)
        return 3
    return 0
