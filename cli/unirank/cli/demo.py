"""``make demo``: train on synthetic data (if needed), serve, ask one question per use-case, stop."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str]) -> None:
    print(f"$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def _unirank() -> list[str]:
    return [sys.executable, "-m", "unirank.cli"]


def _wait_serving(target: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    from unirank.client import RecommenderClient, UniRankError

    deadline = time.monotonic() + timeout_s
    with RecommenderClient(target, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"server exited with code {server.returncode}")
            try:
                if client.health() == "SERVING":
                    return
            except UniRankError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"server at {target} not SERVING after {timeout_s:.0f} s")


def _sample_ids(artifact: Path) -> dict[str, str]:
    """Realistic request ids taken from the artifact: a user, a popular item, a query, a genre."""
    from unirank.artifact import load_artifact
    from unirank.artifact.text import tokenize

    loaded = load_artifact(artifact)
    catalog, retrieval = loaded.catalog, loaded.retrieval
    popular = [int(i) for i in retrieval.popular_items[:50]]
    query = next(
        t for i in popular[5:] for t in tokenize(catalog.titles[i]) if len(t) > 3 and not t.isdigit()
    )
    return {
        "user": catalog.users.key(1),
        "history": ",".join(catalog.items.key(i) for i in popular[10:13]),
        "item": catalog.items.key(popular[0]),
        "query": query,
        "category": catalog.primary_category(popular[1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unirank demo")
    parser.add_argument("--artifact", default="build/artifact")
    parser.add_argument("--profile", default="profiles/cpu-realtime.toml")
    parser.add_argument("--retrain", action="store_true", help="train even if the artifact exists")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    artifact = Path(args.artifact)
    if args.retrain or not (artifact / "manifest.json").is_file():
        _run([*_unirank(), "train", "--data", "synthetic", "--out", str(artifact)])
    else:
        print(f"using existing artifact {artifact} (--retrain to rebuild)")
    port = _free_port()
    target = f"127.0.0.1:{port}"
    server_cmd = [
        *_unirank(),
        "serve",
        "--profile",
        args.profile,
        "--artifact",
        str(artifact),
        "--port",
        str(port),
    ]
    print(f"$ {' '.join(server_cmd)} &", flush=True)
    server = subprocess.Popen(server_cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_serving(target, server, timeout_s=60.0)
        _run([*_unirank(), "health", "--target", target])
        ids = _sample_ids(artifact)
        for use_case in (
            ["notification", "--user", ids["user"], "--history", ids["history"]],
            ["related", "--item", ids["item"]],
            ["search", "--query", ids["query"]],
            ["category", "--category", ids["category"], "--user", ids["user"]],
            ["new-releases", "--user", ids["user"], "--history", ids["history"]],
        ):
            _run([*_unirank(), "recommend", "--target", target, "--max-results", "5", "--debug", *use_case])
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s (server exit code {code})")
    print(_next_steps(args.artifact, args.profile, ids))
    return 0


def _next_steps(artifact: str, profile: str, ids: dict[str, str]) -> str:
    """Three commands to paste next: serve this artifact, ask it something, watch it."""
    unirank = ".venv/bin/unirank"
    return "\n".join(
        [
            "\nnext, in two terminals:",
            f"  {unirank} serve --profile {profile} --artifact {artifact} --port 50151",
            f"  {unirank} recommend --target localhost:50151 notification --user {ids['user']} "
            f"--history {ids['history']}",
            f"  {unirank} monitor --target localhost:50151 --watch",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
