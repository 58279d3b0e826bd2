"""docs/deployment.md names only what exists, and its numbers are the profiles' and manifests'."""

from __future__ import annotations

import inspect
import re
import shlex

import pytest

from tests.deploy.deployfiles import (
    BACKEND_IMAGES,
    DOCS,
    IMAGE_DOCKERFILES,
    K8S,
    PROFILES,
    REPO,
    parse_dockerfile,
    resource,
    resources,
    shipped_profiles,
)
from unirank.client import RecommenderClient
from unirank.server.cli import _parser as serve_parser
from unirank.server.config import load_profile


@pytest.fixture(scope="module")
def text() -> str:
    return DOCS.read_text()


def code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks, backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #", 1)[0].strip())
    return lines


def test_the_table_matches_profiles_and_manifests(text: str) -> None:
    for name in shipped_profiles():
        profile = load_profile(PROFILES / f"{name}.toml")
        spec = resource(K8S / name / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        hpa = resource(K8S / name / "hpa.yaml", "HorizontalPodAutoscaler")["spec"]
        prestop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        image = BACKEND_IMAGES[profile.model.backend]
        cells = [
            str(profile.server.port),
            f"{profile.server.grace_period_s:g} s",
            f"{prestop} s",
            f"{spec['terminationGracePeriodSeconds']} s",
            f"{hpa['minReplicas']} to {hpa['maxReplicas']}",
        ]
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
        assert f"| {image} | " + " | ".join(cells) + " |" in row, f"{row}\nexpected {image} {cells}"


def test_every_repository_path_it_names_exists(text: str) -> None:
    refs = set(re.findall(r"(?<![\w/.])(?:deploy|profiles|docs|tests)/[\w./<>-]*[\w/>]", text))
    assert refs
    deployments = {d["metadata"]["name"] for _, d in resources("Deployment")}
    for ref in sorted(refs):
        if re.fullmatch(r"deploy/[\w-]+", ref):
            # kubectl's deploy/NAME, not a path: NAME must be a Deployment of the manifests.
            assert ref.removeprefix("deploy/") in deployments, f"{ref}: no such Deployment"
            continue
        expanded = [ref.replace("<profile>", p) for p in shipped_profiles()] if "<profile>" in ref else [ref]
        for path in expanded:
            if "<" in path:
                continue  # a placeholder such as versions/<version>/ on the artifact volume
            assert (REPO / path).exists(), f"docs/deployment.md names {path}, which does not exist"
    assert (REPO / ".dockerignore").is_file()


def test_every_make_target_it_names_exists(text: str) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = {m for line in code_lines(text) for m in re.findall(r"^make ([a-z][\w-]*)", line)}
    named |= set(re.findall(r"`make ([a-z][\w-]*)", text))
    assert named, "the laptop section starts from make"
    assert named <= targets, f"unknown make targets: {named - targets}"


def _serve_commands(text: str) -> list[tuple[list[str], str | None]]:
    """(arguments after `serve`, the image it runs in or None for the repository) per command."""
    found = []
    for line in code_lines(text):
        if " serve " not in line:
            continue
        words = shlex.split(line)
        for i, word in enumerate(words):
            if word != "serve" or i == 0:
                continue
            before = words[i - 1]
            image = before.split(":")[0] if before.split(":")[0] in IMAGE_DOCKERFILES else None
            if not (before.endswith("unirank") or image):
                continue
            args = []
            for arg in words[i + 1 :]:
                if arg in {"&", "&&", "|", ";"}:
                    break
                args.append(arg)
            found.append((args, image))
    return found


def test_every_serve_command_it_shows_is_valid(text: str) -> None:
    commands = _serve_commands(text)
    assert len(commands) >= 3
    for args, image in commands:
        parsed = serve_parser().parse_args(args)
        if image is None:
            profile_file = REPO / parsed.profile
        else:
            profile_file = parse_dockerfile(IMAGE_DOCKERFILES[image]).repo_path_of(parsed.profile)
            assert parsed.host == "0.0.0.0", f"a container must listen on every interface: {args}"
        assert profile_file.is_file(), f"{parsed.profile} does not exist"
        if parsed.port is not None:
            assert parsed.port == load_profile(profile_file).server.port, args


def test_it_walks_every_profile_into_the_cluster(text: str) -> None:
    applied = set(re.findall(r"kubectl apply -k (deploy/k8s/[\w-]+)", text))
    for directory in applied:
        assert (REPO / directory / "kustomization.yaml").is_file(), directory
    assert {f"deploy/k8s/{p}" for p in shipped_profiles()} <= applied
    assert {"deploy/k8s/artifacts", "deploy/k8s/otel-collector"} <= applied
    for name in shipped_profiles():
        deployment = resource(K8S / name / "deployment.yaml", "Deployment")["metadata"]["name"]
        assert f"kubectl rollout status deploy/{deployment}" in text


def test_it_covers_rollout_scaling_and_load_balancing(text: str) -> None:
    for topic in (
        "SIGHUP",
        "rollout restart",
        "HorizontalPodAutoscaler",
        "preStop",
        "headless",
        "kube-proxy",
    ):
        assert topic in text, f"docs/deployment.md should explain {topic}"
    # The client snippet uses parameters the client really has.
    assert "channel_options" in inspect.signature(RecommenderClient).parameters
    assert '("grpc.lb_policy_name", "round_robin")' in text


def test_both_images_build_on_debian_slim_python() -> None:
    """The docs and the publisher pod run sh, mv, mkdir, sleep and tar (for kubectl cp) in the
    images: Debian's essential packages, present in python:*-slim-bookworm and kept by both
    runtime stages, which start from that base too."""
    for path in IMAGE_DOCKERFILES.values():
        dockerfile = parse_dockerfile(path)
        base = dockerfile.global_args["PYTHON_IMAGE"]
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim-bookworm", base), base
        assert all(stage.base == "${PYTHON_IMAGE}" for stage in dockerfile.stages), path.name
