"""deploy/otel/collector.yaml is a coherent otelcol-contrib config, and its Deployment runs it.

The collector binary is not available here, so the config is checked structurally: it parses,
names only components of the otelcol-contrib distribution, every pipeline refers to defined
components, and the ports it listens on are the ones the Kubernetes manifests open.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.deployfiles import COLLECTOR_CONFIG, DOCS, K8S, REPO, resource

# Component types of the otelcol-contrib distribution that a config like this one may use.
# Not exhaustive; add to it when the config needs more. (`logging` is absent on purpose: it was
# removed from the collector in v0.111 in favour of `debug`.)
CONTRIB = {
    "receivers": {"otlp", "prometheus", "hostmetrics", "k8s_cluster", "kubeletstats", "filelog", "zipkin"},
    "processors": {
        "batch",
        "memory_limiter",
        "resource",
        "attributes",
        "k8sattributes",
        "resourcedetection",
        "filter",
        "transform",
        "tail_sampling",
        "probabilistic_sampler",
    },
    "exporters": {
        "debug",
        "otlp",
        "otlphttp",
        "prometheus",
        "prometheusremotewrite",
        "file",
        "loadbalancing",
    },
    "extensions": {"health_check", "pprof", "zpages"},
    "connectors": {"spanmetrics", "count", "routing"},
}
SIGNALS = {"traces", "metrics", "logs"}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def component_type(component_id: str) -> str:
    """``type[/name]`` -> type."""
    return component_id.split("/", 1)[0]


def test_only_known_sections_and_components(config: dict[str, Any]) -> None:
    assert set(config) <= set(CONTRIB) | {"service"}
    for section, ids in config.items():
        if section == "service":
            continue
        unknown = [i for i in ids if component_type(i) not in CONTRIB[section]]
        assert not unknown, f"{section}: {unknown} are not otelcol-contrib components (or not allowlisted)"


def test_pipelines_use_defined_components_and_every_component_is_used(config: dict[str, Any]) -> None:
    service = config["service"]
    pipelines = service["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in pipelines.items():
        assert component_type(name) in SIGNALS, name
        assert set(pipeline) <= {"receivers", "processors", "exporters"}
        assert pipeline["receivers"] and pipeline["exporters"], f"{name} needs a receiver and an exporter"
        for kind, ids in pipeline.items():
            missing = [i for i in ids if i not in config.get(kind, {})]
            assert not missing, f"pipeline {name} uses undefined {kind} {missing}"
            used[kind] |= set(ids)
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", "memory_limiter first, so overload is refused early"
        assert "batch" in processors
    for kind, ids in used.items():
        assert set(config.get(kind, {})) == ids, f"defined but unused {kind}: {set(config[kind]) - ids}"
    assert set(service.get("extensions", [])) == set(config.get("extensions", {}))


def test_the_otlp_receiver_takes_grpc_on_every_interface(config: dict[str, Any]) -> None:
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]
    assert grpc["endpoint"] == "0.0.0.0:4317", (
        "the collector's own default is localhost: pods cannot reach it"
    )
    assert config["exporters"]["prometheus"]["endpoint"].startswith("0.0.0.0:")
    assert config["extensions"]["health_check"]["endpoint"].startswith("0.0.0.0:")


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_the_collector_deployment_runs_this_config_on_its_ports(config: dict[str, Any]) -> None:
    deployment = resource(K8S / "otel-collector" / "deployment.yaml", "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    image, _, tag = container["image"].rpartition(":")
    assert image == "otel/opentelemetry-collector-contrib", "the distribution the allowlist is about"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin the collector release, not {tag!r}"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["otlp-grpc"] == _port(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    assert ports["prometheus"] == _port(config["exporters"]["prometheus"]["endpoint"])
    assert ports["health"] == _port(config["extensions"]["health_check"]["endpoint"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"

    (arg,) = container["args"]
    config_path = arg.removeprefix("--config=")
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    (item,) = volume["configMap"]["items"]
    assert config_path == f"{mount['mountPath']}/{item['path']}"
    # docs/deployment.md creates that ConfigMap, under that key, from this file.
    create = (
        f"kubectl create configmap {volume['configMap']['name']} "
        f"--from-file={item['key']}={COLLECTOR_CONFIG.relative_to(REPO)}"
    )
    assert create in DOCS.read_text(), f"docs/deployment.md should show: {create}"

    service = resource(K8S / "otel-collector" / "service.yaml", "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for port in service["spec"]["ports"]:
        assert port["port"] == ports[port["targetPort"]]
