"""Traces, metrics and request logs of the server, built once per server from the profile's
``[telemetry]`` section (see docs/observability.md)."""

from unirank.server.telemetry.core import (
    BatchMember,
    RequestTrace,
    RpcScope,
    Telemetry,
    current_request,
)
from unirank.server.telemetry.drift import ScoreReference, psi
from unirank.server.telemetry.settings import TelemetrySettingsError, resolve

__all__ = [
    "BatchMember",
    "RequestTrace",
    "RpcScope",
    "ScoreReference",
    "Telemetry",
    "TelemetrySettingsError",
    "current_request",
    "psi",
    "resolve",
]
