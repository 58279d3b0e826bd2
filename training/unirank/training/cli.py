"""``unirank train`` and ``unirank evaluate``: the training side's command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from unirank.artifact import ArtifactError
from unirank.training.config import TrainConfig
from unirank.training.evaluate import format_table
from unirank.training.sources import DataSpecError, parse_data_spec

SIZES = ("tiny", "small", "default")


def _data_spec(text: str) -> str:
    try:
        return str(parse_data_spec(text))
    except DataSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unirank train", description="Train the multi-task model and write one artifact directory."
    )
    parser.add_argument("--data", type=_data_spec, default="synthetic", help="data spec: synthetic")
    parser.add_argument("--out", type=Path, required=True, help="artifact directory (created or replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, init and sampling (default 0)")
    parser.add_argument("--size", choices=SIZES, default="default", help="preset (default: default)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the preset's)")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default 1: reproducible, robust on busy CPUs)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unirank evaluate",
        description="Re-evaluate an artifact per task on the data it was trained on (regenerated "
        "from its manifest).",
    )
    parser.add_argument("--artifact", type=Path, required=True, help="artifact directory")
    parser.add_argument("--data", type=_data_spec, help="data spec (default: the one in the manifest)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return parser


def _train(args: argparse.Namespace) -> int:
    from unirank.training.pipeline import train_artifact  # torch loads only when a command runs

    overrides = {"data": args.data}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.threads is not None:
        overrides["threads"] = args.threads
    config = TrainConfig.preset(args.size, seed=args.seed, **overrides)
    started = time.perf_counter()
    out = train_artifact(config, args.out, progress=None if args.quiet else _stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"artifact {manifest['model_version']} -> {out}  ({time.perf_counter() - started:.1f}s)")
    print(format_table(metrics["tasks"]))
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    from unirank.training.pipeline import evaluate_artifact

    metrics = evaluate_artifact(args.artifact, args.data, progress=None if args.json else _stderr)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        print(format_table(metrics["tasks"]))
    return 0


def main(argv: Sequence[str]) -> int:
    """``argv[0]`` names the subcommand (``train`` or ``evaluate``); the rest are its flags."""
    if not argv or argv[0] not in {"train", "evaluate"}:
        print("usage: unirank {train,evaluate} [ARGS]", file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    parser = _train_parser() if command == "train" else _evaluate_parser()
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:  # argparse exits on --help and on errors; the dispatcher wants a code
        return int(exc.code or 0)
    try:
        return _train(args) if command == "train" else _evaluate(args)
    except (ArtifactError, DataSpecError, FileExistsError, ValueError) as exc:
        print(f"unirank {command}: error: {exc}", file=sys.stderr)
        return 1
