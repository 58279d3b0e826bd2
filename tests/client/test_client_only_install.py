"""The ``unirank-client`` distribution installs alone into a fresh venv and works without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.client.client_echo_server import FAIL_INVALID, RunningServer

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
# What building and installing the client needs from an index; the same specs as its pyproject.
NEEDED_FROM_INDEX = ["setuptools>=69", "grpcio>=1.85.1", "protobuf>=7.35.1,<8"]
STEP_TIMEOUT_S = 240

CHECK_IMPORTS = textwrap.dedent(
    """
    import importlib.resources, importlib.util, json, sys
    import unirank.client
    import unirank.client.cli
    import unirank.v1.recommender_pb2
    import unirank.v1.recommender_pb2_grpc
    heavy = ["torch", "onnxruntime", "numpy"]
    print(json.dumps({
        "installed": [name for name in heavy if importlib.util.find_spec(name) is not None],
        "imported": [name for name in sys.modules if name.split(".")[0] in heavy],
        "client_file": unirank.client.__file__,
        "typing_files": [
            importlib.resources.files(package).joinpath(name).is_file()
            for package, name in [
                ("unirank.client", "py.typed"),
                ("unirank.v1", "py.typed"),
                ("unirank.v1", "recommender_pb2.pyi"),
            ]
        ],
    }))
    """
)


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)  # the venv must see only what was installed into it
    return subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, env=env, **kwargs)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-only")
    venv = root / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"

    # Skip only when no index (local wheels, mirror or PyPI) can provide what the install needs.
    probe = _run(
        [
            str(python),
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--dest",
            str(root / "probe"),
            *NEEDED_FROM_INDEX,
        ]
    )
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach an index providing {NEEDED_FROM_INDEX}: {probe.stderr.strip()[-500:]}")

    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = root / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    installed = _run([str(python), "-m", "pip", "install", "--quiet", str(source)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_client_imports_without_torch_or_onnxruntime(client_venv: Path) -> None:
    checked = _run([str(client_venv / "bin" / "python"), "-c", CHECK_IMPORTS], cwd=client_venv)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["installed"] == []
    assert report["imported"] == []
    # Imported from the venv, not from this checkout, with its typing files (PEP 561).
    assert report["client_file"].startswith(str(client_venv))
    assert report["typing_files"] == [True, True, True]


def test_console_script_help(client_venv: Path) -> None:
    shown = _run([str(client_venv / "bin" / "unirank"), "--help"])
    assert shown.returncode == 0, shown.stderr
    for command in ("recommend", "info", "health"):
        assert command in shown.stdout


def test_installed_cli_talks_to_a_server(client_venv: Path, server: RunningServer) -> None:
    def unirank(*args: str) -> subprocess.CompletedProcess[str]:
        return _run([str(client_venv / "bin" / "unirank"), "recommend", "--target", server.target, *args])

    answered = unirank("search", "--query", "q", "--candidates", "a,b")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.splitlines()[0].startswith("task=search")
    as_json = unirank("--json", "related", "--item", "i", "--candidates", "z")
    assert json.loads(as_json.stdout)["items"][0]["item_id"] == "z"
    # Without googleapis-common-protos the error still says what went wrong.
    failed = unirank("search", "--query", "", "--request-id", FAIL_INVALID)
    assert failed.returncode == 1
    assert "unirank: INVALID_ARGUMENT: the request is invalid" in failed.stderr
