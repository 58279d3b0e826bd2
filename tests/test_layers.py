"""The layers depend one way (README, "Repository layout"): an AST walk over every product module,
lazy imports inside functions included, so a forbidden import fails here before it ships."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package folder -> module prefixes its code must never import (anywhere, lazily or not)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "client/unirank/client": (
        "torch", "onnxruntime", "numpy", "faiss",
        "unirank.artifact", "unirank.model", "unirank.server", "unirank.training",
    ),
    "core/unirank/artifact": ("torch", "onnxruntime", "unirank.model", "unirank.server", "unirank.training",
                              "unirank.client"),
    "core/unirank/model": ("unirank.server", "unirank.training", "unirank.client"),
    "server/unirank/server": ("unirank.training", "unirank.client"),
    "training/unirank/training": ("unirank.server", "unirank.client"),
}  # fmt: skip
# The one server module that may load torch: the torch backend (the ONNX profile never does).
TORCH_ALLOWED = {"server/unirank/server/backends/torch_backend.py"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        banned = forbidden
        if folder == "server/unirank/server" and relative not in TORCH_ALLOWED:
            banned = (*forbidden, "torch", "unirank.model")
        for line, module in imported_modules(path):
            if any(module == prefix or module.startswith(prefix + ".") for prefix in banned):
                bad.append(f"{relative}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(folder: str) -> None:
    assert _violations(folder, FORBIDDEN[folder]) == []


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import torch\n    from unirank.training import x\n")
    assert [name for _, name in imported_modules(module)] == ["torch", "unirank.training"]


PACKAGES = {  # source folder -> the import path of its top package
    "client/unirank/client": "unirank.client",
    "core/unirank/artifact": "unirank.artifact",
    "core/unirank/model": "unirank.model",
    "cli/unirank/cli": "unirank.cli",
    "server/unirank/server": "unirank.server",
    "training/unirank/training": "unirank.training",
    "bench/unirank_bench": "unirank_bench",
    "bench/unirank_stress": "unirank_stress",
}


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports (lazily or not); a package's __init__ is the package."""
    files: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            files[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # A module reaching its own package's __init__ is how Python loads it, not a circle.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_nothing_imports_the_command_at_the_top() -> None:
    """``unirank.cli`` dispatches to every layer, so no layer may import it back."""
    graph = import_graph()
    assert [
        name
        for name, targets in graph.items()
        if not name.startswith("unirank.cli")
        and any(t == "unirank.cli" or t.startswith("unirank.cli.") for t in targets)
    ] == []
