"""[telemetry] settings: file < OTEL_* environment < flags, and clear errors for what we cannot do."""

from __future__ import annotations

import pytest

from unirank.server.config import ProfileError, TelemetrySection
from unirank.server.telemetry import TelemetrySettingsError, resolve
from unirank.server.telemetry.providers import otlp_endpoint

from ..conftest import profile_with

FILE = TelemetrySection(traces_exporter="console", metrics_exporter="prometheus", sampling_ratio=0.5)


def test_environment_overrides_the_file_and_flags_override_both() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SERVICE_NAME": "unirank-edge",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "9100",
    }
    settings = resolve(FILE, env)
    assert settings.traces_exporter == "otlp"
    assert settings.metrics_exporter == "prometheus"  # the file's, no variable set
    assert settings.service_name == "unirank-edge"
    assert settings.sampling_ratio == 0.1 and settings.parent_based
    assert settings.otlp_endpoint == "http://collector:4317"
    assert settings.metric_export_interval_s == 15.0
    assert settings.prometheus_port == 9100
    flagged = resolve(FILE, env, {"traces_exporter": "none", "sampling_ratio": None, "log_format": "json"})
    assert flagged.traces_exporter == "none" and flagged.log_format == "json"
    assert flagged.sampling_ratio == 0.1  # a flag left unset does not reset the environment's value


def test_the_standard_sampler_names_map_onto_ratio_and_parent_based() -> None:
    assert resolve(FILE, {"OTEL_TRACES_SAMPLER": "always_off"}).sampling_ratio == 0.0
    always_on = resolve(FILE, {"OTEL_TRACES_SAMPLER": "always_on"})
    assert always_on.sampling_ratio == 1.0 and not always_on.parent_based
    assert (
        resolve(FILE, {"OTEL_RESOURCE_ATTRIBUTES": "a=b,service.name=from-attrs"}).service_name
        == "from-attrs"
    )


def test_sdk_disabled_turns_every_exporter_off() -> None:
    settings = resolve(FILE, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert settings.traces_exporter == "none" and settings.metrics_exporter == "none"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "traces_exporter"),
        ({"OTEL_METRICS_EXPORTER": "otlp,prometheus"}, "exactly one"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "gRPC only"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "not supported"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "sampling_ratio"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "milliseconds"),
    ],
)
def test_values_we_cannot_honour_fail_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(TelemetrySettingsError, match=message):
        resolve(FILE, env)


def test_the_profile_section_is_strict_and_documented() -> None:
    with pytest.raises(ProfileError, match=r"telemetry\.exporter"):
        profile_with(telemetry={"exporter": "console"})
    with pytest.raises(ProfileError, match="drift_min_samples"):
        profile_with(telemetry={"drift_window": 10, "drift_min_samples": 20})
    assert (
        profile_with(telemetry={"metrics_exporter": "prometheus"}).telemetry.metrics_exporter == "prometheus"
    )
    for name, field in TelemetrySection.model_fields.items():
        assert field.description, name


def test_the_otlp_endpoint_of_each_signal_follows_the_same_precedence() -> None:
    file = TelemetrySection(traces_exporter="otlp", otlp_endpoint="http://from-file:4317")
    assert otlp_endpoint(resolve(file, {}), {}, "TRACES") == "http://from-file:4317"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://from-env:4317"}
    assert otlp_endpoint(resolve(file, env), env, "TRACES") == "http://from-env:4317"
    env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = "http://metrics-only:4317"
    assert otlp_endpoint(resolve(file, env), env, "METRICS") == "http://metrics-only:4317"
    assert otlp_endpoint(resolve(file, env), env, "TRACES") == "http://from-env:4317"
    assert otlp_endpoint(TelemetrySection(), {}, "TRACES") is None  # the exporter's default
