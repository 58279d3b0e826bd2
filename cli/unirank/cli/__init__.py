"""The ``unirank`` command: dispatches to the training, serving and client command lines.

Each subcommand's module is imported only when it runs, so ``unirank recommend`` never loads
torch or onnxruntime and ``unirank serve`` never loads training code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("unirank.training.cli", "train a model and write an artifact"),
    "evaluate": ("unirank.training.cli", "evaluate an artifact per task"),
    "compare": ("unirank.training.cli", "unified model vs single-task models, popularity and classic peers"),
    "tune": ("unirank.training.cli", "search training knobs on validation (Optuna); write a --config file"),
    "serve": ("unirank.server.cli", "serve an artifact under a deployment profile"),
    "recommend": ("unirank.client.cli", "send a request to a running server"),
    "info": ("unirank.client.cli", "print a running server's model info"),
    "health": ("unirank.client.cli", "check a running server's health"),
    "monitor": ("unirank.client.cli", "per-task traffic, latency, errors, fallbacks and drift of a server"),
    "rollout": ("unirank.client.cli", "a server's canary rollout: status, start, promote, abort"),
    "alerts": ("unirank.server.alerts", "write a profile's Prometheus recording and alerting rules"),
}


def _usage() -> str:
    lines = ["usage: unirank COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"unirank: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result: int = module.main([command, *rest])
    return result


if __name__ == "__main__":
    raise SystemExit(main())
