"""Every Kubernetes manifest in deploy/k8s validates against the Kubernetes JSON schemas, offline.

kubernetes-validate ships the schemas of each Kubernetes release inside its wheel; the tests
validate in strict mode (unknown fields are errors, so a typo cannot pass) and with the network
switched off, so they prove the validation needs nothing but the installed package.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deployfiles import K8S, REPO, documents, manifest_files

try:
    import kubernetes_validate
except ImportError as exc:  # fail, never skip: CI must validate the manifests
    raise ImportError("kubernetes-validate is a dev dependency: pip install -e '.[dev]'") from exc

# The oldest release the manifests support (the first with the preStop `sleep` action on by
# default) and the newest whose schemas the pinned kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test: the schemas must come from the wheel."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def validate(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        # The command-line tool only warns here; an unknown kind or apiVersion must fail.
        pytest.fail(exc.message)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: {where}: {exc.message}")


def test_the_pinned_kubernetes_versions_are_shipped_in_the_wheel() -> None:
    from kubernetes_validate.utils import all_versions

    shipped = set(all_versions())
    missing = [v for v in K8S_VERSIONS if v not in shipped]
    assert not missing, (
        f"kubernetes-validate {kubernetes_validate.__version__} ships no schemas for {missing}; "
        f"it has {sorted(shipped)[0]} to {sorted(shipped)[-1]}: update K8S_VERSIONS and docs/deployment.md"
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path.relative_to(REPO)} holds no resource"
    for doc in docs:
        validate(doc, version)


def test_the_validation_is_not_vacuous() -> None:
    """A typo, a wrong type and an unknown kind are each refused."""
    deployment = documents(K8S / "cpu-realtime" / "deployment.yaml")[0]
    version = K8S_VERSIONS[-1]

    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**deployment, "kind": "Deploymnet"}, version, strict=True)


@pytest.mark.parametrize("directory", sorted(p.parent for p in K8S.rglob("kustomization.yaml")), ids=str)
def test_each_kustomization_lists_exactly_its_manifests(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    files = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


def test_every_manifest_directory_has_a_kustomization() -> None:
    directories = {p.parent for p in manifest_files()}
    assert directories == {p.parent for p in K8S.rglob("kustomization.yaml")}
