"""Readers for the deployment assets: Dockerfiles, .dockerignore, Kubernetes manifests, profiles.

Small and strict on purpose: each reader understands exactly the subset of its format that the
files in deploy/ use, and raises on anything else rather than guessing.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
COLLECTOR_CONFIG = DEPLOY / "otel" / "collector.yaml"
DOCS = REPO / "docs" / "deployment.md"
PROFILES = REPO / "profiles"

# Which image runs which backend, and which Dockerfile builds it.
IMAGE_DOCKERFILES = {"unirank-cpu": DOCKER / "Dockerfile.cpu", "unirank-cuda": DOCKER / "Dockerfile.cuda"}
BACKEND_IMAGES = {"onnxruntime": "unirank-cpu", "torch": "unirank-cuda"}


# --- pyproject ----------------------------------------------------------------------------------


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_version() -> str:
    return str(pyproject()["project"]["version"])


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.toml"))


# --- Dockerfiles --------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    text: str  # the arguments, continuation lines joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's list, or None for the shell form."""
        if self.text.startswith("["):
            value = json.loads(self.text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


@dataclass
class Copy:
    sources: list[str]
    dest: str  # absolute, resolved against the stage's WORKDIR
    from_stage: str | None


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults visible inside a stage (ARGs declared in it)."""
        args: dict[str, str] = {}
        for inst in stage.all("ARG"):
            name, _, default = inst.text.partition("=")
            args[name.strip()] = default.strip()
        return args

    def copies(self, stage: Stage) -> list[Copy]:
        """Every COPY of a stage, with its destination made absolute against WORKDIR."""
        workdir = "/"
        result: list[Copy] = []
        for inst in stage.instructions:
            if inst.keyword == "WORKDIR":
                workdir = _join(workdir, inst.text.strip())
            elif inst.keyword == "COPY":
                words = inst.exec_form() or shlex.split(inst.text)
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                unknown = [f for f in flags if not f.startswith(("--from=", "--chown=", "--chmod="))]
                assert not unknown, f"{self.path.name}:{inst.line}: unexpected COPY flags {unknown}"
                assert len(paths) >= 2, f"{self.path.name}:{inst.line}: COPY needs a source and a dest"
                dest = _join(workdir, paths[-1])
                if paths[-1].endswith("/"):
                    dest += "/"
                result.append(Copy(paths[:-1], dest, from_stage))
        return result

    def repo_path_of(self, image_path: str) -> Path:
        """The repository file that the final stage's COPYs put at ``image_path``."""
        for copy in self.copies(self.final):
            if copy.from_stage is not None or not copy.dest.endswith("/") or len(copy.sources) != 1:
                continue
            if image_path.startswith(copy.dest):
                return REPO / copy.sources[0].rstrip("/") / image_path[len(copy.dest) :]
        raise AssertionError(f"{self.path.name}: nothing copied from the repository to {image_path}")


def _join(base: str, path: str) -> str:
    joined = path if path.startswith("/") else base.rstrip("/") + "/" + path
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # comments and blank lines (parser directives are comments too)
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        logical.append((start, " ".join(p for p in pending if p)))
        pending = []
    assert not pending, f"{path.name}: ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, rest = text.partition(" ")
        inst = Instruction(keyword.upper(), rest.strip(), number)
        if inst.keyword == "FROM":
            words = inst.text.split()
            words = [w for w in words if not w.startswith("--platform=")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"{path.name}:{number}: unexpected FROM {inst.text!r}"
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert inst.keyword == "ARG", f"{path.name}:{number}: only ARG may precede the first FROM"
            name, _, default = inst.text.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(inst)
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(path, global_args, stages)


def expand(text: str, args: dict[str, str]) -> str:
    """Substitute ``${NAME}`` and ``$NAME`` with ARG defaults (unknown names are an error)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in args, f"${name} is not a declared ARG"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


# --- .dockerignore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    regex: re.Pattern[str]
    negated: bool


@cache
def dockerignore_rules() -> tuple[IgnoreRule, ...]:
    """The rules of .dockerignore, with Docker's semantics (patterns match a path or a parent)."""
    rules: list[IgnoreRule] = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/")
        rules.append(IgnoreRule(re.compile(_glob_regex(pattern)), negated))
    return tuple(rules)


def _glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return "^" + out + "$"


def in_build_context(relative: str) -> bool:
    """Whether ``relative`` (a path from the repository root) is sent to the Docker daemon."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for rule in dockerignore_rules():
        if any(rule.regex.match(c) for c in candidates):
            excluded = not rule.negated
    return not excluded


# --- Kubernetes manifests -----------------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every Kubernetes resource file under deploy/k8s (kustomization files are not resources)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@cache
def _documents(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def documents(path: Path) -> list[dict[str, Any]]:
    return list(_documents(path))


def resource(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _documents(path) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{path.relative_to(REPO)}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def resources(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in manifest_files() for d in _documents(p) if d["kind"] == kind]
