"""``unirank train``, ``unirank evaluate`` and ``unirank compare``: the training side's command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirank.artifact import ArtifactError
from unirank.training.config import WARM_START_LR_SCALE, WARM_START_MAX_STEPS, TrainConfig
from unirank.training.evaluate import format_table
from unirank.training.sources import USAGE, DataSpecError, parse_data_spec

SIZES = ("tiny", "small", "default", "sparse")


def _data_spec(text: str) -> str:
    try:
        return str(parse_data_spec(text))
    except DataSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unirank train", description="Train the multi-task model and write one artifact directory."
    )
    parser.add_argument(
        "--data", type=_data_spec, help=f"data spec: {USAGE} (default synthetic; required with --warm-start)"
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact directory (created or replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, init and sampling (default 0)")
    parser.add_argument(
        "--size", choices=SIZES, help="preset (default: default; with --warm-start the parent's)"
    )
    parser.add_argument(
        "--items", type=int, help="synthetic catalogue size in place of the preset's (scale benchmarks)"
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the preset's)")
    parser.add_argument(
        "--warm-start",
        type=Path,
        metavar="ARTIFACT",
        help="fine-tune this artifact's model on --data (same catalogue and inputs) into a new version",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="stop after N optimizer steps (with --warm-start default "
        f"{WARM_START_MAX_STEPS}; otherwise epochs and early stopping decide)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        help="Adam learning rate (default: the preset's; with --warm-start "
        f"{WARM_START_LR_SCALE:g} x the parent's)",
    )
    parser.add_argument(
        "--device", help="cpu (default) or cuda; under torchrun each process takes cuda:LOCAL_RANK"
    )
    _add_training_flags(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=_config_file,
        help="a tuned config file (`unirank tune`); the flags below override its fields",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default 1: reproducible, robust on busy CPUs)"
    )
    parser.add_argument("--architecture", choices=("shared_bottom", "mmoe"), help="shared representation")
    parser.add_argument(
        "--task-weighting", choices=("static", "uncertainty"), help="static w_t or learned (uncertainty)"
    )
    parser.add_argument("--task-weights", type=_task_table, help="w_t per task, e.g. search=2,category=0.5")
    parser.add_argument("--task-ratios", type=_task_table, help="share of each task per batch, e.g. search=2")
    parser.add_argument(
        "--task-sampling",
        choices=("sqrt", "equal", "proportional"),
        help="batch shares without --task-ratios (default sqrt: square root of each task's rows)",
    )
    parser.add_argument(
        "--impute", action=argparse.BooleanOptionalAction, help="semantic imputation of missing context"
    )
    parser.add_argument(
        "--in-batch-negatives", action=argparse.BooleanOptionalAction, help="in-batch negatives"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="any TrainConfig field"
    )


def _config_file(text: str) -> dict[str, Any]:
    from unirank.training.tune import load_config_file

    try:
        return load_config_file(Path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _task_table(text: str) -> dict[str, float]:
    table = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            table[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TASK=NUMBER[,TASK=NUMBER...], got {text!r}") from None
    return table


def _config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """TrainConfig fields from the shared flags (only the ones given), over a ``--config`` file's."""
    overrides: dict[str, object] = dict(args.config["unified"]) if getattr(args, "config", None) else {}
    for flag, name in (
        ("threads", "threads"),
        ("architecture", "architecture"),
        ("task_weighting", "task_weighting"),
        ("task_weights", "task_weights"),
        ("task_ratios", "task_ratios"),
        ("task_sampling", "task_sampling"),
        ("impute", "impute_context"),
        ("in_batch_negatives", "in_batch_negatives"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    if args.task_weights is not None:
        base = overrides.get("task_weights") or TrainConfig().task_weights
        overrides["task_weights"] = {**base, **args.task_weights}  # type: ignore[dict-item]
    fields = TrainConfig.__dataclass_fields__
    for assignment in args.set:
        name, _, raw = assignment.partition("=")
        if name not in fields:
            raise ValueError(f"--set {assignment}: TrainConfig has no field {name!r}")
        try:
            overrides[name] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[name] = raw  # a bare string, e.g. --set architecture=mmoe
        if isinstance(overrides[name], list):
            overrides[name] = tuple(overrides[name])  # type: ignore[arg-type]
    return overrides


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
    # torch loads only when a command runs
    from unirank.training.distributed import init_distributed
    from unirank.training.pipeline import train_artifact
    from unirank.training.warmstart import refit_artifact

    if args.warm_start is not None and args.data is None:
        raise ValueError("--warm-start needs --data: the new logs to fine-tune on")
    overrides: dict[str, object] = {
        "data": args.data or "synthetic",
        "seed": args.seed,
        **_config_overrides(args),
    }
    for flag, name in (("max_steps", "max_steps"), ("learning_rate", "learning_rate"), ("device", "device")):
        if getattr(args, flag) is not None:
            overrides[name] = getattr(args, flag)
    if args.size is not None:
        overrides["size"] = args.size
    if args.items is not None:
        overrides["synthetic_items"] = args.items
    if args.epochs is not None:
        if args.warm_start is not None:
            raise ValueError("--warm-start is bounded by --max-steps, not --epochs")
        overrides["epochs"] = args.epochs
    distributed = init_distributed(str(overrides.get("device", "cpu")))
    try:
        quiet = args.quiet or (distributed is not None and not distributed.primary)
        progress = None if quiet else _stderr
        started = time.perf_counter()
        if args.warm_start is not None:
            out = refit_artifact(args.warm_start, overrides, args.out, progress, distributed)
        else:
            config = TrainConfig.preset(str(overrides.pop("size", "default")), **overrides)  # type: ignore[arg-type]
            out = train_artifact(config, args.out, progress, distributed)
    finally:
        if distributed is not None:
            distributed.close()
    if distributed is not None and not distributed.primary:
        return 0
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    parent = manifest.get("warm_started_from")
    print(
        f"artifact {manifest['model_version']} -> {out}  ({time.perf_counter() - started:.1f}s"
        + (f", warm-started from {parent}, {manifest['training']['steps']} steps" if parent else "")
        + ")"
    )
    mapping = manifest["training_data"].get("mapped_onto_parent")
    if mapping:
        print(
            f"interactions kept {mapping['kept']}/{mapping['interactions']}: dropped "
            f"{mapping['unknown_item']} with items unknown to the parent, {mapping['unknown_anchor']} "
            f"with unknown anchors, {mapping['unknown_category']} with unknown categories; "
            f"{mapping['unknown_users']} users new to the parent (kept, ranked from their history)"
        )
    print(format_table(metrics["tasks"]))
    _print_skipped(metrics.get("skipped_tasks", {}))
    return 0


def _print_skipped(skipped: dict[str, str]) -> None:
    for task, reason in skipped.items():
        print(f"skipped {task}: {reason}")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    from unirank.training.pipeline import evaluate_artifact

    metrics = evaluate_artifact(args.artifact, args.data, progress=None if args.json else _stderr)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        print(format_table(metrics["tasks"]))
        _print_skipped(metrics.get("skipped_tasks", {}))
        from unirank.training.plots import TASK_METRICS, TRAINING_CURVES

        plots = [Path(args.artifact) / name for name in (TRAINING_CURVES, TASK_METRICS)]
        if all(plot.is_file() for plot in plots):
            print(f"plots of this version (from its training): {plots[0]} and {plots[1]}", file=sys.stderr)
    return 0


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unirank compare",
        description="Unified model vs one model per use-case, the model without its task-type input, "
        "popularity and classic peers, on one split, over several seeds.",
    )
    parser.add_argument("--data", type=_data_spec, required=True, help=f"data spec: {USAGE}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--json", type=Path, help="write the result as JSON to this file")
    parser.add_argument("--report", type=Path, help="write a Markdown report (with PNG plots next to it)")
    parser.add_argument("--workers", type=int, default=1, help="models trained at once (default 1)")
    parser.add_argument(
        "--size", choices=SIZES, default="default", help="synthetic preset (default: default)"
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the preset's)")
    parser.add_argument("--rows-per-task", type=int, default=0, help="test rows per task (default 0: all)")
    parser.add_argument(
        "--ablation",
        action="append",
        default=[],
        help="extra unified variant, e.g. no_imputation (repeatable)",
    )
    parser.add_argument(
        "--ablation-seeds",
        type=int,
        help="train no_task_type and the --ablation variants on the first N seeds only "
        "(default: every seed; no target reads them, the report states it)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the classic peers")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_training_flags(parser)
    return parser


def _compare(args: argparse.Namespace) -> int:
    from unirank.training.compare import run_compare
    from unirank.training.compare_report import format_table as compare_table

    overrides: dict[str, object] = _config_overrides(args)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = TrainConfig.preset(args.size, 0, **overrides)
    result = run_compare(
        args.data,
        seeds=args.seeds,
        config=config,
        single_task=args.config["single_task"] if args.config else None,
        workers=args.workers,
        rows_per_task=args.rows_per_task,
        ablations=args.ablation,
        ablation_seeds=args.ablation_seeds,
        with_peers=not args.no_peers,
        progress=None if args.quiet else _stderr,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if args.report:
        from unirank.training.quality import write_report

        write_report(result, args.report)
        print(f"wrote {args.report}, its plots under {args.report.with_suffix('')}/", file=sys.stderr)
    print(compare_table(result))
    return 0


def _tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unirank tune",
        description="Search task weights, batch shares, learning rate, capacity, regularisation and "
        "stopping on the validation split (Optuna, with pruning); write a config for --config.",
    )
    parser.add_argument("--data", type=_data_spec, required=True, help=f"data spec: {USAGE}")
    parser.add_argument("--budget-minutes", type=float, required=True, help="search time per model tuned")
    parser.add_argument("--out", type=Path, required=True, help="the config file to write (JSON)")
    parser.add_argument(
        "--size", choices=SIZES, default="default", help="synthetic preset (default: default)"
    )
    parser.add_argument("--trials", type=int, help="at most this many trials per model (default: the budget)")
    parser.add_argument(
        "--single-task",
        action="store_true",
        help="also tune one model per use-case, each with the same budget (for a fair compare)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_training_flags(parser)
    return parser


def _tune(args: argparse.Namespace) -> int:
    from unirank.training.tune import tune

    if args.budget_minutes <= 0:
        raise ValueError("--budget-minutes must be > 0")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.preset(args.size, 0, **_config_overrides(args))
    result = tune(
        args.data,
        config,
        args.budget_minutes,
        single_task=args.single_task,
        trials=args.trials,
        progress=None if args.quiet else _stderr,
    )
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}: validation {result['validation']}; trials {result['trials']}")
    return 0


COMMANDS = {
    "train": (_train_parser, _train),
    "evaluate": (_evaluate_parser, _evaluate),
    "compare": (_compare_parser, _compare),
    "tune": (_tune_parser, _tune),
}


def main(argv: Sequence[str]) -> int:
    """``argv[0]`` names the subcommand (train, evaluate, compare or tune); the rest are its flags."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: unirank {{{','.join(COMMANDS)}}} [ARGS]", file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    make_parser, run = COMMANDS[command]
    try:
        args = make_parser().parse_args(rest)
    except SystemExit as exc:  # argparse exits on --help and on errors; the dispatcher wants a code
        return int(exc.code or 0)
    try:
        return run(args)
    except (ArtifactError, DataSpecError, FileExistsError, ValueError) as exc:
        print(f"unirank {command}: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # e.g. a peer library that is not installed
        print(f"unirank {command}: error: {exc}", file=sys.stderr)
        return 1
