"""Traces, metrics and request logs of the server, built once per server from the profile's
``[telemetry]`` section (see docs/observability.md)."""

from unirank.server.telemetry.drift import ScoreReference, psi
from unirank.server.telemetry.facade import Telemetry
from unirank.server.telemetry.rpc import MethodInfo, RpcScope
from unirank.server.telemetry.settings import TelemetrySettingsError, resolve
from unirank.server.telemetry.trace import BatchMember, RequestTrace, current_request

__all__ = [
    "BatchMember",
    "MethodInfo",
    "RequestTrace",
    "RpcScope",
    "ScoreReference",
    "Telemetry",
    "TelemetrySettingsError",
    "current_request",
    "psi",
    "resolve",
]
