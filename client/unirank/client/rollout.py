"""``unirank rollout status|start|promote|abort``: a server's canary rollout, per use-case.

Calls the rollout RPCs (``GetRolloutStatus``, ``StartRollout``, ``PromoteRollout``,
``AbortRollout``); the commands need a token allowed to call them where the server asks for one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from unirank.client.domain import GateDecision
from unirank.client.errors import error_from_rpc
from unirank.client.monitor import OperatorChannel
from unirank.v1 import recommender_pb2 as pb

START_TIMEOUT_S = 120.0
"""Deadline of ``start``: loading, warming and gating a version takes seconds to minutes."""


@dataclass(frozen=True)
class RolloutTask:
    """One use-case's part in a rollout."""

    task: str
    status: str
    """"canary" (being judged), "promoted" or "rolled_back"."""
    canary_percent: float
    step: int
    stable_version: str
    verdict: str
    """The last look's verdict: "continue", "hold", "promote" or "rollback"."""
    reason: str
    e_value: float
    canary_impressions: int
    canary_clicks: int
    stable_impressions: int
    stable_clicks: int


@dataclass(frozen=True)
class RolloutStatus:
    """A server's rollout: "none", "active" or "finished"."""

    state: str
    rollout_id: str = ""
    canary_version: str = ""
    steps_percent: tuple[float, ...] = ()
    tasks: list[RolloutTask] = field(default_factory=list)
    started_unix_ms: int = 0
    finished_unix_ms: int = 0
    retrain_request: str = ""


def decode_rollout(message: pb.RolloutStatus) -> RolloutStatus:
    return RolloutStatus(
        state=message.state,
        rollout_id=message.rollout_id,
        canary_version=message.canary_version,
        steps_percent=tuple(message.steps_percent),
        tasks=[
            RolloutTask(
                task=t.task,
                status=t.status,
                canary_percent=t.canary_percent,
                step=t.step,
                stable_version=t.stable_version,
                verdict=t.verdict,
                reason=t.reason,
                e_value=t.e_value,
                canary_impressions=t.canary_impressions,
                canary_clicks=t.canary_clicks,
                stable_impressions=t.stable_impressions,
                stable_clicks=t.stable_clicks,
            )
            for t in message.tasks
        ],
        started_unix_ms=message.started_unix_ms,
        finished_unix_ms=message.finished_unix_ms,
        retrain_request=message.retrain_request,
    )


class RolloutClient(OperatorChannel):
    """A channel to one server, for the rollout RPCs only."""

    def _call(self, method: str, request: object, timeout: float | None = None) -> RolloutStatus:
        try:
            response = getattr(self._stub, method)(
                request, timeout=self._settings.timeout(timeout), metadata=self._settings.call_metadata()
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return decode_rollout(response.rollout)

    def status(self) -> RolloutStatus:
        return self._call("GetRolloutStatus", pb.GetRolloutStatusRequest())

    def start(self, timeout: float | None = START_TIMEOUT_S) -> RolloutStatus:
        """Roll out the repository's newest version: the server loads, warms and gates it first,
        which takes longer than a ranking call (hence its own deadline)."""
        return self._call("StartRollout", pb.StartRolloutRequest(), timeout)

    def promote(self, tasks: Sequence[str] = ()) -> RolloutStatus:
        return self._call("PromoteRollout", pb.PromoteRolloutRequest(tasks=list(tasks)))

    def abort(self, tasks: Sequence[str] = ()) -> RolloutStatus:
        return self._call("AbortRollout", pb.AbortRolloutRequest(tasks=list(tasks)))


def _when(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=UTC).isoformat(timespec="seconds") if unix_ms else "-"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_gate(decision: GateDecision) -> list[str]:
    """The offline gate's last decision: a summary line, then one line per served use-case."""
    verdict = "accepted" if decision.accepted else "REFUSED"
    lines = [
        f"last gate: {decision.model_version} {verdict} against {decision.serving_version or '?'}"
        f"  ({_when(decision.decided_unix_ms)})"
    ]
    rows = [["task", "metric", "serving", "new", "change", "rows", "source", "verdict", "reason"]]
    for v in decision.tasks:
        change = "-" if v.relative_change is None else f"{v.relative_change:+.1%}"
        values = [_value(v.serving_value), _value(v.candidate_value), change, str(v.rows)]
        rows.append([v.task, v.metric, *values, v.source, "pass" if v.passed else "REFUSE", v.reason])
    return lines + _columns(rows)


def _columns(rows: list[list[str]]) -> list[str]:
    """``rows`` as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def format_rollout(status: RolloutStatus) -> str:
    """A header line, then one row per use-case: status, canary share, counts, e-value, why."""
    if status.state == "none":
        return "no rollout"
    steps = " -> ".join(f"{s:g}" for s in status.steps_percent)
    lines = [
        f"rollout {status.rollout_id}  {status.state}  canary={status.canary_version}  steps={steps} %  "
        f"started={_when(status.started_unix_ms)}  finished={_when(status.finished_unix_ms)}"
    ]
    rows = [
        ["task", "status", "canary %", "stable", "canary impr/clicks", "stable impr/clicks", "e-value", "why"]
    ]
    for t in status.tasks:
        rows.append(
            [
                t.task,
                t.status,
                f"{t.canary_percent:g}",
                t.stable_version,
                f"{t.canary_impressions}/{t.canary_clicks}",
                f"{t.stable_impressions}/{t.stable_clicks}",
                f"{t.e_value:.3g}",
                t.reason,
            ]
        )
    lines += _columns(rows)
    if status.retrain_request:
        lines.append(f"retrain request: {status.retrain_request}")
    return "\n".join(lines)


def add_rollout_parser(
    commands: Any, add_connection_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    """``unirank rollout ACTION [TASK ...]`` on the client command line's subcommands."""
    rollout = commands.add_parser(
        "rollout",
        help="a running server's canary rollout, per use-case",
        description="Status of the canary rollout (per use-case: step, share, counts, verdict), start one "
        "for the repository's newest version, or promote / roll back use-cases now (docs/rollouts.md).",
    )
    add_connection_flags(rollout)
    rollout.add_argument("action", choices=("status", "start", "promote", "abort"))
    rollout.add_argument(
        "tasks",
        nargs="*",
        metavar="TASK",
        help="promote / abort: these use-cases only (default: every canary)",
    )


def run_rollout(
    args: argparse.Namespace, client: RolloutClient, output: Callable[[argparse.Namespace, Any, str], None]
) -> int:
    """Carry out ``args.action`` and print the rollout as it stands after it."""
    with client:
        if args.action == "status":
            status = client.status()
        elif args.action == "start":
            status = client.start()
        elif args.action == "promote":
            status = client.promote(args.tasks)
        else:
            status = client.abort(args.tasks)
    output(args, asdict(status), format_rollout(status))
    return 0
