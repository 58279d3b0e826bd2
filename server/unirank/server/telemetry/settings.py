"""The effective ``[telemetry]`` settings: the profile's, then the standard OTEL_* variables, then flags.

Precedence is file < environment < command-line flags. Only the variables that map onto a profile
key are read here; the rest (OTLP headers, certificates, timeouts and compression, batch span
processor limits, OTEL_RESOURCE_ATTRIBUTES) are honoured by the OpenTelemetry SDK itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from unirank.server.config import ProfileError, TelemetrySection


class TelemetrySettingsError(ProfileError):
    """An OTEL_* variable or a flag has a value UniRank cannot honour."""


_SAMPLERS: dict[str, tuple[bool, float | None]] = {
    # name -> (parent based, fixed ratio; None: take OTEL_TRACES_SAMPLER_ARG)
    "always_on": (False, 1.0),
    "always_off": (False, 0.0),
    "traceidratio": (False, None),
    "parentbased_always_on": (True, 1.0),
    "parentbased_always_off": (True, 0.0),
    "parentbased_traceidratio": (True, None),
}


def _single_exporter(variable: str, value: str) -> str:
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    if len(names) != 1:
        raise TelemetrySettingsError(f"{variable}={value!r}: UniRank exports to exactly one destination")
    return names[0]


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[telemetry]`` keys the OTEL_* variables in ``environ`` set (unvalidated)."""
    update: dict[str, Any] = {}
    service = environ.get("OTEL_SERVICE_NAME", "").strip()
    if not service:
        for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
            key, _, value = pair.partition("=")
            if key.strip() == "service.name" and value.strip():
                service = value.strip()
    if service:
        update["service_name"] = service
    if environ.get("OTEL_TRACES_EXPORTER"):
        update["traces_exporter"] = _single_exporter("OTEL_TRACES_EXPORTER", environ["OTEL_TRACES_EXPORTER"])
    if environ.get("OTEL_METRICS_EXPORTER"):
        update["metrics_exporter"] = _single_exporter(
            "OTEL_METRICS_EXPORTER", environ["OTEL_METRICS_EXPORTER"]
        )
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler:
        if sampler not in _SAMPLERS:
            raise TelemetrySettingsError(
                f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; use one of {sorted(_SAMPLERS)}"
            )
        parent_based, ratio = _SAMPLERS[sampler]
        update["parent_based"] = parent_based
        if ratio is None:
            argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
            try:
                ratio = float(argument) if argument else 1.0
            except ValueError:
                raise TelemetrySettingsError(
                    f"OTEL_TRACES_SAMPLER_ARG={argument!r} is not a number"
                ) from None
        update["sampling_ratio"] = ratio
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        update["otlp_endpoint"] = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
    for variable in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        protocol = environ.get(variable, "").strip().lower()
        if protocol and protocol != "grpc":
            raise TelemetrySettingsError(f"{variable}={protocol!r}: UniRank exports OTLP over gRPC only")
    interval_ms = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if interval_ms:
        try:
            update["metric_export_interval_s"] = float(interval_ms) / 1000.0
        except ValueError:
            raise TelemetrySettingsError(
                f"OTEL_METRIC_EXPORT_INTERVAL={interval_ms!r} is not a number of milliseconds"
            ) from None
    if environ.get("OTEL_EXPORTER_PROMETHEUS_HOST"):
        update["prometheus_host"] = environ["OTEL_EXPORTER_PROMETHEUS_HOST"].strip()
    if environ.get("OTEL_EXPORTER_PROMETHEUS_PORT"):
        update["prometheus_port"] = environ["OTEL_EXPORTER_PROMETHEUS_PORT"].strip()
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        update["traces_exporter"] = "none"
        update["metrics_exporter"] = "none"
    return update


def resolve(
    section: TelemetrySection, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None
) -> TelemetrySection:
    """``section`` with the environment applied over it, then ``flags`` (None values are ignored)."""
    merged = section.model_dump()
    merged.update(environment_overrides(environ))
    env_applied = _validate(merged, "environment (OTEL_*)")
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    if not given:
        return env_applied
    return _validate({**env_applied.model_dump(), **given}, "command-line flags")


def _validate(data: dict[str, Any], source: str) -> TelemetrySection:
    try:
        return TelemetrySection.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"telemetry.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise TelemetrySettingsError(f"{source}: {problems}") from None
