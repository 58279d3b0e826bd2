"""Even in the full install, the client and its CLI load no torch, onnxruntime or numpy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "onnxruntime", "numpy")


def _loaded_after(code: str) -> list[str]:
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_importing_the_client_loads_nothing_heavy() -> None:
    assert _loaded_after("import unirank.client, unirank.client.cli, unirank.client.codec") == []


def test_the_unirank_command_dispatches_client_subcommands_without_torch() -> None:
    code = """
        import contextlib, io
        from unirank.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            status = main(["recommend", "--help"])
        assert status == 0 and "TASK" in out.getvalue(), (status, out.getvalue())
    """
    assert _loaded_after(code) == []
