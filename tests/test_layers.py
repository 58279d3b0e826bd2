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
