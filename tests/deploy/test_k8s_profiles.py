"""The Kubernetes manifests of each shipped profile agree with the profile, the image and each other.

Schema validity is test_k8s_schema.py's job; this file checks what a schema cannot: the command
is a valid ``unirank serve``, the profile file exists in the image, the ports and probes match the
profile, the shutdown budget covers the preStop sleep and the profile's drain, and the Service,
HPA and PodDisruptionBudget select and target the right things.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.deployfiles import (
    BACKEND_IMAGES,
    IMAGE_DOCKERFILES,
    K8S,
    PROFILES,
    REPO,
    parse_dockerfile,
    project_version,
    resource,
    resources,
    shipped_profiles,
)
from unirank.server.app import SERVICE_NAME
from unirank.server.cli import _parser as serve_parser
from unirank.server.config import Profile, load_profile

# Seconds left after preStop + drain for the process to close its backend and exit.
EXIT_MARGIN_S = 2
# Seconds of preStop sleep: enough for an endpoint removal to reach kube-proxy, DNS and meshes.
MIN_PRESTOP_S = 3


def deployment(profile: str) -> dict[str, Any]:
    return resource(K8S / profile / "deployment.yaml", "Deployment")


def pod_spec(profile: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(profile)["spec"]["template"]["spec"]
    return spec


def container(profile: str) -> dict[str, Any]:
    containers = pod_spec(profile)["containers"]
    assert len(containers) == 1, "one server container per pod"
    found: dict[str, Any] = containers[0]
    return found


def serve_args(profile: str) -> Any:
    args = container(profile)["args"]
    assert "command" not in container(profile), "keep the image's ENTRYPOINT (unirank)"
    assert args[0] == "serve"
    return serve_parser().parse_args(args[1:])


def image_name(profile: str) -> tuple[str, str]:
    name, _, tag = container(profile)["image"].rpartition(":")
    return name.rsplit("/", 1)[-1], tag


def the_profile(profile: str) -> Profile:
    return load_profile(PROFILES / f"{profile}.toml")


def grpc_port(profile: str) -> int:
    (port,) = [p for p in container(profile)["ports"] if p["name"] == "grpc"]
    assert port["protocol"] == "TCP"
    value: int = port["containerPort"]
    return value


@pytest.fixture(params=shipped_profiles())
def profile(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_every_shipped_profile_has_manifests_and_nothing_else_does() -> None:
    directories = {p.name for p in K8S.iterdir() if p.is_dir() and (p / "deployment.yaml").is_file()}
    server_directories = {d for d in directories if d != "otel-collector"}
    assert server_directories == set(shipped_profiles())
    for name in shipped_profiles():
        assert sorted(p.name for p in (K8S / name).glob("*.yaml")) == [
            "deployment.yaml",
            "hpa.yaml",
            "kustomization.yaml",
            "pdb.yaml",
            "service.yaml",
        ]


def test_the_command_is_a_valid_unirank_serve_of_the_profile(profile: str) -> None:
    args = serve_args(profile)
    assert args.host == "0.0.0.0", "the server must listen on the pod IP, not only on loopback"
    image, tag = image_name(profile)
    assert tag == project_version()
    dockerfile = parse_dockerfile(IMAGE_DOCKERFILES[image])
    profile_file = dockerfile.repo_path_of(args.profile)
    assert profile_file == PROFILES / f"{profile}.toml", f"{args.profile} is not this profile's file"
    assert BACKEND_IMAGES[the_profile(profile).model.backend] == image, "the image must carry the backend"


def test_ports_agree_from_profile_to_service(profile: str) -> None:
    port = the_profile(profile).server.port
    assert serve_args(profile).port == port
    assert grpc_port(profile) == port
    c = container(profile)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == port, f"{probe} must probe the server port"
    for service in resource_list(profile, "service.yaml", "Service"):
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == port and service_port["targetPort"] == "grpc"
        assert service_port["appProtocol"] == "grpc", "tells a mesh to balance per call, not per connection"


def resource_list(profile: str, file: str, kind: str) -> list[dict[str, Any]]:
    return [d for p, d in resources(kind) if p == K8S / profile / file]


def test_probes_use_the_standard_grpc_health_service(profile: str) -> None:
    c = container(profile)
    assert SERVICE_NAME == "unirank.v1.RecommenderService"
    assert c["startupProbe"]["grpc"]["service"] == ""
    assert c["livenessProbe"]["grpc"]["service"] == ""
    assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    # The port opens only after loading and warming the artifact: allow at least a minute.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_the_shutdown_budget_covers_the_presleep_and_the_drain(profile: str) -> None:
    grace_period_s = the_profile(profile).server.grace_period_s
    prestop = container(profile)["lifecycle"]["preStop"]
    assert set(prestop) == {"sleep"}, "a preStop sleep, so endpoints are gone before SIGTERM drains"
    sleep_s = prestop["sleep"]["seconds"]
    assert sleep_s >= MIN_PRESTOP_S
    budget = pod_spec(profile)["terminationGracePeriodSeconds"]
    assert budget > grace_period_s
    assert budget >= sleep_s + grace_period_s + EXIT_MARGIN_S, (
        f"terminationGracePeriodSeconds={budget} must cover preStop {sleep_s} s + "
        f"server.grace_period_s {grace_period_s} s + {EXIT_MARGIN_S} s to exit"
    )
    # The timeline in the file's header states the same numbers.
    header = (K8S / profile / "deployment.yaml").read_text()
    assert f"server.grace_period_s = {grace_period_s:g} s" in header
    assert f"SIGKILL would only come at {budget} s" in header or f"SIGKILL only at {budget} s" in header


def test_resources_are_requested_and_limited(profile: str) -> None:
    limits = container(profile)["resources"]
    for key in ("cpu", "memory"):
        assert key in limits["requests"] and limits["limits"][key] == limits["requests"][key], (
            "requests == limits: Guaranteed QoS, no CPU throttling surprises under a deadline"
        )
    wants_gpu = the_profile(profile).model.device == "cuda"
    if wants_gpu:
        assert limits["limits"]["nvidia.com/gpu"] == 1 and limits["requests"]["nvidia.com/gpu"] == 1
        tolerations = pod_spec(profile)["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    else:
        assert "nvidia.com/gpu" not in limits["limits"]
        assert "tolerations" not in pod_spec(profile)


def test_the_pod_runs_non_root_on_a_read_only_root_filesystem(profile: str) -> None:
    spec = pod_spec(profile)
    image, _ = image_name(profile)
    user = parse_dockerfile(IMAGE_DOCKERFILES[image]).final.last("USER").text
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}" == user
    assert spec["automountServiceAccountToken"] is False
    security = container(profile)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The one writable place: HOME and the temporary directory.
    mounts = {m["mountPath"]: m for m in container(profile)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_the_artifact_repository_is_mounted_read_only_from_the_shared_claim(profile: str) -> None:
    claim = resource(K8S / "artifacts" / "pvc.yaml", "PersistentVolumeClaim")
    artifact = serve_args(profile).artifact
    mounts = {m["mountPath"]: m for m in container(profile)["volumeMounts"]}
    assert artifact in mounts, f"--artifact {artifact} is not a mount point"
    mount = mounts[artifact]
    assert mount["readOnly"] is True
    assert mount["subPath"] == "versions", "the repository of versions; staging/ stays out of sight"
    (volume,) = [v for v in pod_spec(profile)["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}


def test_the_publisher_writes_where_the_servers_read() -> None:
    claim = resource(K8S / "artifacts" / "pvc.yaml", "PersistentVolumeClaim")
    pod = resource(K8S / "artifacts" / "publisher.yaml", "Pod")
    (c,) = pod["spec"]["containers"]
    image, tag = c["image"].rsplit("/", 1)[-1].split(":")
    assert image in IMAGE_DOCKERFILES and tag == project_version()
    (volume,) = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    script = c["command"][-1]
    assert c["command"][:2] == ["sh", "-c"]
    # It creates the two directories of the layout the servers and docs/deployment.md rely on.
    assert f"{mount['mountPath']}/versions" in script and f"{mount['mountPath']}/staging" in script
    # Only commands every Debian image has (coreutils, dash): the CPU image is python:*-slim.
    for word in ("mkdir", "sleep"):
        assert word in script


def test_the_hpa_owns_the_replica_count_of_the_deployment(profile: str) -> None:
    hpa = resource(K8S / profile / "hpa.yaml", "HorizontalPodAutoscaler")
    d = deployment(profile)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": d["metadata"]["name"],
    }
    assert "replicas" not in d["spec"], "re-applying the Deployment must not reset the HPA's count"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu", "needs a CPU request on the container (set above)"
    rollout = d["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0, "a rollout adds a pod before it drains one"


def test_services_and_budgets_select_the_deployments_pods(profile: str) -> None:
    d = deployment(profile)
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    selector = d["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    services = resource_list(profile, "service.yaml", "Service")
    assert len(services) == 2
    for service in services:
        assert service["spec"]["selector"] == selector
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and headless[0]["metadata"]["name"].endswith("-headless")
    pdb = resource(K8S / profile / "pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    spread = pod_spec(profile)["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_telemetry_goes_to_the_collector_service(profile: str) -> None:
    env = {e["name"]: e.get("value") for e in container(profile)["env"]}
    collector = resource(K8S / "otel-collector" / "service.yaml", "Service")
    (otlp,) = [p for p in collector["spec"]["ports"] if p["name"] == "otlp-grpc"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{collector['metadata']['name']}:{otlp['port']}"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_SERVICE_NAME"] == deployment(profile)["metadata"]["name"]
    assert f"unirank.profile={profile}" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_manifests_name_only_files_that_exist() -> None:
    """Every repository path a manifest's comments point at exists."""
    for path in sorted(K8S.rglob("*.yaml")):
        for ref in re.findall(r"(?:deploy|profiles|docs)/[\w./-]+\w", path.read_text()):
            assert (REPO / ref).exists(), f"{path.relative_to(REPO)} names {ref}, which does not exist"
