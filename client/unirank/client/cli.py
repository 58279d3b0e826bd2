"""The client's command line: ``unirank recommend | info | health | monitor`` against a running server.

Connection settings come from flags, else the environment (``UNIRANK_TARGET``,
``UNIRANK_TOKEN``), else the defaults (``localhost:50151``, no token); flags win.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc

from unirank.client._common import DEFAULT_TIMEOUT_S
from unirank.client.codec import fallback_reason_name
from unirank.client.domain import (
    Category,
    ModelInfo,
    NewReleases,
    Notification,
    Ranking,
    RecommendationRequest,
    RelatedItems,
    Search,
    Task,
)
from unirank.client.errors import UniRankError
from unirank.client.monitor import StatsClient, format_views, summarize, views_as_json
from unirank.client.rollout import RolloutClient, add_rollout_parser, format_gate, run_rollout
from unirank.client.sync import RecommenderClient
from unirank.v1 import recommender_pb2 as pb

DEFAULT_TARGET = "localhost:50151"
EXIT_COLD_START = 3
"""``recommend --strict``: the exit status when a cold-start fallback answered (an unknown id)."""
_TITLE_WIDTH = 40

# CLI spelling of a use-case -> what its flags build.
_TASK_HELP = {
    "search": "rank items matching a free-text query",
    "notification": "rank items to push to a user",
    "related": "rank items like an anchor item",
    "category": "rank items for a category / genre row",
    "new-releases": "rank recently released items for a user",
}
# Use-cases ranked for a user: --user is required.
_PERSONAL = ("notification", "new-releases")


def _id_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _add_connection_flags(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    # Flags are accepted both before and after the task name; on the nested parser they
    # default to SUPPRESS so that an absent flag does not overwrite one given earlier.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if nested else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default(None),
        metavar="HOST:PORT",
        help=f"server address (default: $UNIRANK_TARGET or {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT_S),
        metavar="S",
        help=f"deadline in seconds (default: {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="use TLS")
    group.add_argument(
        "--ca-cert", default=default(None), metavar="PEM", help="root certificates for TLS (implies --tls)"
    )
    group.add_argument(
        "--client-cert",
        default=default(None),
        metavar="PEM",
        help="client certificate chain for mutual TLS (with --client-key; implies --tls)",
    )
    group.add_argument(
        "--client-key", default=default(None), metavar="PEM", help="private key of --client-cert"
    )
    group.add_argument(
        "--token", default=default(None), help="bearer token (default: $UNIRANK_TOKEN; prefer the variable)"
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON")


def _add_request_flags(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if nested else value

    group = parser.add_argument_group("request options")
    group.add_argument(
        "--max-results", type=_non_negative_int, default=default(0), metavar="N", help="items to return"
    )
    group.add_argument(
        "--candidates",
        type=_id_list,
        action="append",
        default=default(None),
        metavar="ID,ID",
        help="rank these items instead of running retrieval (comma-separated, repeatable)",
    )
    group.add_argument(
        "--exclude",
        type=_id_list,
        action="append",
        default=default(None),
        metavar="ID,ID",
        help="items that must not appear (comma-separated, repeatable)",
    )
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="ask for timings and sources"
    )
    group.add_argument("--request-id", default=default(""), metavar="ID", help="echoed back by the server")
    group.add_argument("--country", default=default(""), help='ISO 3166-1 alpha-2, e.g. "US"')
    group.add_argument("--language", default=default(""), help='BCP 47, e.g. "en"')
    group.add_argument("--device", default=default(""), help='e.g. "tv", "mobile", "web"')
    group.add_argument(
        "--strict",
        action="store_true",
        default=default(False),
        help=f"exit {EXIT_COLD_START} when a cold-start fallback (an unknown id) answered, not the model",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``unirank recommend | info | health | monitor``."""
    parser = argparse.ArgumentParser(prog="unirank", description="Talk to a running UniRank server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recommend = commands.add_parser("recommend", help="send a request to a running server")
    _add_connection_flags(recommend, nested=False)
    _add_request_flags(recommend, nested=False)
    tasks = recommend.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, help_ in _TASK_HELP.items():
        task = tasks.add_parser(name, help=help_, description=help_)
        if name == "search":
            task.add_argument("--query", required=True, help="free-text query")
        elif name == "related":
            task.add_argument("--item", required=True, metavar="ID", help="anchor item id")
        elif name == "category":
            task.add_argument("--category", required=True, metavar="ID", help="category id")
        elif name == "new-releases":
            task.add_argument(
                "--window-years",
                type=_non_negative_int,
                default=0,
                metavar="N",
                help="release years that count as new (default: 0, the server's window)",
            )
        task.add_argument("--user", required=name in _PERSONAL, default="", metavar="ID", help="user id")
        task.add_argument(
            "--history", type=_id_list, default=[], metavar="ID,ID", help="recent items, most recent last"
        )
        _add_connection_flags(task, nested=True)
        _add_request_flags(task, nested=True)

    info = commands.add_parser("info", help="print a running server's model info")
    _add_connection_flags(info, nested=False)
    health = commands.add_parser("health", help="check a running server's health (exit 0 when SERVING)")
    _add_connection_flags(health, nested=False)
    health.add_argument("--service", default="", help='service name (default: "", the whole server)')
    monitor = commands.add_parser(
        "monitor",
        help="per-task traffic, latency, errors, fallbacks and drift of a running server",
        description="Per-task traffic, latency percentiles, error and fallback rates, cache hits and "
        "score drift (PSI) of a running server, from its GetServingStats counters. One reading covers "
        "the server's uptime; --watch prints one update per interval covering that interval.",
    )
    _add_connection_flags(monitor, nested=False)
    monitor.add_argument("--watch", action="store_true", help="keep printing updates until interrupted")
    monitor.add_argument(
        "--interval",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between updates (default: 5)",
    )
    monitor.add_argument(
        "--count", type=_positive_int, default=None, metavar="N", help="with --watch: stop after N updates"
    )
    add_rollout_parser(commands, lambda parser: _add_connection_flags(parser, nested=False))
    return parser


def _task(args: argparse.Namespace) -> Task:
    if args.task == "search":
        return Search(query=args.query)
    if args.task == "related":
        return RelatedItems(anchor_item_id=args.item)
    if args.task == "category":
        return Category(category_id=args.category)
    if args.task == "new-releases":
        return NewReleases(window_years=args.window_years)
    return Notification()


def _flatten(lists: list[list[str]] | None) -> tuple[str, ...]:
    return tuple(item for ids in lists or [] for item in ids)


def request_from_args(args: argparse.Namespace) -> RecommendationRequest:
    """The domain request ``unirank recommend ...`` sends."""
    return RecommendationRequest(
        task=_task(args),
        user_id=args.user,
        history_item_ids=tuple(args.history),
        request_id=args.request_id,
        country=args.country,
        language=args.language,
        device=args.device,
        max_results=args.max_results,
        candidate_item_ids=_flatten(args.candidates),
        excluded_item_ids=_flatten(args.exclude),
        debug=args.debug,
    )


def _read_pem(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as pem:
        return pem.read()


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    """Target, deadline and credentials from the flags, then the environment, then the defaults."""
    if bool(args.client_cert) != bool(args.client_key):
        raise SystemExit("unirank: --client-cert and --client-key go together (mutual TLS)")
    root_certificates = _read_pem(args.ca_cert)
    credentials = None
    if args.client_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=_read_pem(args.client_key),
            certificate_chain=_read_pem(args.client_cert),
        )
    return {
        "target": args.target or os.environ.get("UNIRANK_TARGET") or DEFAULT_TARGET,
        "timeout": args.timeout,
        "tls": args.tls,
        "root_certificates": root_certificates,
        "credentials": credentials,
        "bearer_token": args.token or os.environ.get("UNIRANK_TOKEN") or None,
    }


def _client(args: argparse.Namespace) -> RecommenderClient:
    return RecommenderClient(**_connection(args))


def _table(rows: list[list[str]], right_aligned: set[int]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_ranking(ranking: Ranking) -> str:
    """A header line with the serving facts, then the ranked table (and timings under --debug)."""
    fallback = "no"
    if ranking.fallback:
        fallback = ranking.fallback_reason or "yes"
        if ranking.fallback_detail:
            fallback += f" ({ranking.fallback_detail})"
    header = (
        f"task={ranking.task_type or '?'}  model={ranking.model_version or '?'}  "
        f"profile={ranking.profile or '?'}  cache={'hit' if ranking.served_from_cache else 'miss'}  "
        f"fallback={fallback}"
    )
    if ranking.stored_history:
        header += "  history=stored"
    if ranking.arm == "canary":
        header += "  arm=canary"
    if ranking.request_id:
        header += f"  request_id={ranking.request_id}"
    lines = [header]
    if ranking.items:
        rows = [["rank", "item_id", "score", "title", "category", "source"]]
        rows += [
            [
                str(rank),
                item.item_id,
                f"{item.score:.4f}",
                _shorten(item.title, _TITLE_WIDTH),
                item.category_id,
                item.retrieval_source or "-",
            ]
            for rank, item in enumerate(ranking.items, start=1)
        ]
        lines += _table(rows, right_aligned={0, 2})
    else:
        lines.append("(no items)")
    if ranking.timings:
        lines.append("timings_ms: " + "  ".join(f"{stage}={ms:.2f}" for stage, ms in ranking.timings.items()))
    return "\n".join(lines)


def format_model_info(info: ModelInfo) -> str:
    """Key/value lines for the model, then one line per task with its offline metrics."""
    created = (
        datetime.fromtimestamp(info.created_unix_ms / 1000, tz=UTC).isoformat(timespec="seconds")
        if info.created_unix_ms
        else "?"
    )
    facts = [
        ["model_version", info.model_version],
        ["schema_version", info.schema_version],
        ["profile", info.profile],
        ["backend", info.backend],
        ["device", info.device],
        ["catalog_size", str(info.catalog_size)],
        ["created", created],
    ]
    lines = _table(facts, right_aligned=set())
    if info.tasks:
        rows = [["task", "served", "offline metrics"]]
        rows += [
            [
                task.task_type,
                "yes" if task.served else "no",
                "  ".join(f"{name}={value:.4f}" for name, value in task.offline_metrics.items()) or "-",
            ]
            for task in info.tasks
        ]
        lines += ["", *_table(rows, right_aligned=set())]
    if info.last_gate is not None:
        lines += ["", *format_gate(info.last_gate)]
    return "\n".join(lines)


def print_error(error: UniRankError, stream: TextIO) -> None:
    """Status code and message, then each field violation the message does not already say, then
    the reason where it adds to the code, then when to retry."""
    print(f"unirank: {error.code}: {error.message}", file=stream)
    for field, description in error.field_violations:
        if f"{field}: {description}" not in error.message:
            print(f"  {field}: {description}", file=stream)
    if error.reason and error.reason != error.code:
        print(f"  reason: {error.reason}", file=stream)
    if error.retry_after_s is not None:
        print(f"  retry after {error.retry_after_s:g} s", file=stream)


def _output(args: argparse.Namespace, as_json: Any, as_text: str) -> None:
    print(json.dumps(as_json, indent=2, ensure_ascii=False) if args.json else as_text)


def _stats_client(args: argparse.Namespace) -> StatsClient:
    return StatsClient(**_connection(args))


def _monitor(args: argparse.Namespace) -> int:
    with _stats_client(args) as client:
        previous = None
        updates = 0
        try:
            while True:
                current = client.fetch()
                interval = current.uptime_s - previous.uptime_s if previous is not None else None
                views = summarize(current, previous)
                if args.json:
                    # One JSON object per update (JSON lines) so a watch can be piped into jq.
                    print(json.dumps(views_as_json(current, views, interval), ensure_ascii=False), flush=True)
                else:
                    stamp = datetime.now(tz=UTC).isoformat(timespec="seconds")
                    print(f"{stamp}  {format_views(current, views, interval)}\n", flush=True)
                updates += 1
                if not args.watch or (args.count is not None and updates >= args.count):
                    return 0
                previous = current
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "monitor":
        return _monitor(args)
    if args.command == "rollout":
        return run_rollout(args, RolloutClient(**_connection(args)), _output)
    with _client(args) as client:
        if args.command == "recommend":
            ranking = client.recommend(request_from_args(args))
            _output(args, asdict(ranking), format_ranking(ranking))
            if ranking.fallback:
                # On stderr too, so a script piping stdout still sees that the model did not answer.
                detail = f": {ranking.fallback_detail}" if ranking.fallback_detail else ""
                print(
                    f"unirank: answered by the fallback ({ranking.fallback_reason}){detail}", file=sys.stderr
                )
                if args.strict and ranking.fallback_reason == fallback_reason_name(
                    pb.FALLBACK_REASON_COLD_START
                ):
                    return EXIT_COLD_START
            return 0
        if args.command == "info":
            info = client.model_info()
            _output(args, asdict(info), format_model_info(info))
            return 0
        status = client.health(args.service)
        _output(args, {"service": args.service, "status": status}, status)
        return 0 if status == "SERVING" else 1


def main(argv: Sequence[str]) -> int:
    """Run ``argv`` (``["recommend" | "info" | "health" | "monitor", *args]``); returns the exit status."""
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:
        # argparse exits on --help and on usage errors; a caller of main() wants a status back.
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    try:
        return _run(args)
    except UniRankError as error:
        print_error(error, sys.stderr)
        return 1
    except BrokenPipeError:
        # `unirank recommend --json | head -2`: the reader is gone, which is not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError, TypeError) as error:
        print(f"unirank: {error}", file=sys.stderr)
        return 2


def standalone_main() -> int:
    """Console-script entry of the client-only distribution: ``sys.argv[1]`` is the subcommand."""
    return main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(standalone_main())
