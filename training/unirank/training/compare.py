"""``unirank compare``: one unified model against what a team would build instead, measured alike.

On one data set and one per-user temporal split, for each seed, it trains with the same budget
(steps, batch size, negatives) and architecture:

* ``unified``: one model for every use-case;
* ``single_task``: one model per use-case, trained and early-stopped on that use-case alone;
* ``no_task_type``: the unified model without the task-type input (one head for all tasks);
* any extra ablations (e.g. the unified model without semantic imputation);

and ranks each task's test rows (the same rows for every method and seed) with them, with a
popularity baseline per use-case, and with the classic peers of :mod:`unirank.training.peers`.
Model selection (early stopping, peer hyperparameters) uses the validation split only; the test
split is touched once per reported number. The result holds the mean and standard deviation over
seeds per task, method and metric, and the relative delta of the unified model against each.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact import TASKS, Catalog
from unirank.training import metrics
from unirank.training.baselines import TaskAwarePopularityScorer
from unirank.training.config import TrainConfig
from unirank.training.coverage import plan_tasks
from unirank.training.dataset import Dataset
from unirank.training.evaluate import METRIC_ORDER, evaluate_scorers, evaluation_rows
from unirank.training.progress import progress_bar
from unirank.training.scoring import Scorer

Progress = Callable[[str], None]

UNIFIED = "unified"
SINGLE_TASK = "single_task"
NO_TASK_TYPE = "no_task_type"
POPULARITY = "popularity"
PEERS = "peers"
TARGET_METRIC = f"ndcg@{metrics.K_DEFAULT}"
METRICS: tuple[str, ...] = (TARGET_METRIC, *(m for m in METRIC_ORDER if m != TARGET_METRIC))
"""The evaluation's metrics, the comparison's target first."""
PEER_TARGET_TASKS: tuple[str, ...] = tuple(spec.name for spec in TASKS)
"""Tasks on which the unified model is expected to match the best classic peer: every one."""

ABLATIONS: Mapping[str, dict[str, Any]] = {
    "no_imputation": {"impute_context": False},
    "shared_bottom": {"architecture": "shared_bottom"},
    "mmoe": {"architecture": "mmoe"},
    "uncertainty_weights": {"task_weighting": "uncertainty"},
    "static_weights": {"task_weighting": "static"},
    "in_batch_negatives": {"in_batch_negatives": True},
    "drop_retired": {"retired_tasks": "drop"},
    "no_calibration": {"calibrate_heads": False},
}
"""Optional extra unified variants (``--ablation NAME``): the config changes each one makes."""


@dataclass
class Job:
    """One model to train and evaluate: a variant of the unified config, on one seed."""

    variant: str
    seed: int
    config: TrainConfig
    tasks: tuple[str, ...]
    """Tasks this model is evaluated on (a single-task model: its own)."""
    verbose: bool = True
    """Progress lines on stderr (workers cannot share the caller's progress callback)."""


@dataclass
class JobResult:
    variant: str
    seed: int
    test: dict[str, dict[str, float]]
    """{task: {metric: value}} on the fixed test rows."""
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Prepared:
    """What every job shares: the split data set and the test rows every method ranks."""

    dataset: Dataset
    catalog: Catalog
    test_rows: dict[str, np.ndarray]
    validation_rows: dict[str, np.ndarray]
    peer_data: Any = None


_WORKER_STATE: dict[str, Prepared] = {}


def _init_worker(path: str) -> None:
    _limit_blas_threads()  # one BLAS thread per worker: the workers already fill the cores
    with open(path, "rb") as handle:
        _WORKER_STATE["prepared"] = pickle.load(handle)


def _run_job(job: Job, say: Progress | None = None) -> JobResult:
    from unirank.training.evaluate import ModelScorer
    from unirank.training.train import torch_threads, train_model

    prepared = _WORKER_STATE["prepared"]
    label = f"[seed {job.seed} {job.variant}]"
    emit = say or (_stderr if job.verbose else _quiet)
    with torch_threads(job.config.threads):
        result = train_model(
            prepared.dataset, prepared.catalog, job.config, progress=lambda line: emit(f"{label} {line}")
        )
        scores = evaluate_scorers(
            {"model": ModelScorer(result.model)},
            prepared.dataset,
            "test",
            prepared.catalog,
            0,
            0,
            tasks={t: prepared.test_rows[t] for t in job.tasks if t in prepared.test_rows},
        )
    test = {task: by["model"] for task, by in scores.items()}
    emit(
        f"{label} done in {result.seconds:.0f}s (best epoch {result.best_epoch}); test ndcg@10 "
        + " ".join(f"{t}={m[TARGET_METRIC]:.4f}" for t, m in test.items())
    )
    return JobResult(
        variant=job.variant,
        seed=job.seed,
        test=test,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        steps=result.steps,
        seconds=result.seconds,
        history=[asdict(epoch) for epoch in result.history],
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    del message


def model_jobs(
    config: TrainConfig,
    seeds: Sequence[int],
    ablations: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    single_task: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Job]:
    """Every model of the comparison: per seed the unified model, its ablations, and one per task
    of ``tasks`` (None: every task; a skipped use-case gets no model and is evaluated by none).

    ``single_task`` holds tuned fields per task (``unirank tune --single-task``) for its model.
    """
    names = tuple(tasks) if tasks is not None else tuple(spec.name for spec in TASKS)
    jobs = []
    for seed in seeds:
        base = config.replace(seed=seed)
        jobs.append(Job(UNIFIED, seed, base, names))
        jobs.append(Job(NO_TASK_TYPE, seed, base.replace(use_task_type=False), names))
        for ablation in ablations:
            jobs.append(Job(ablation, seed, base.replace(**ABLATIONS[ablation]), names))
        for task in names:
            own = base.replace(**(single_task or {}).get(task, {}))
            jobs.append(Job(f"{SINGLE_TASK}:{task}", seed, single_task_config(own, task), (task,)))
    return jobs


def single_task_config(config: TrainConfig, task: str) -> TrainConfig:
    """The unified config for one task, with the same budget and the same selection granularity.

    The budget (max steps x batch size) is the unified model's, all spent on the task. A unified
    step holds 1/T of its rows per task, so a single-task model validates T times as often (every
    ``steps_per_epoch / T`` steps, rounded, with the epochs and patience scaled to match): both are
    checked after the same number of rows of the task, and neither is stuck with a coarse
    checkpoint. Where the rounded epoch does not divide the budget, the last epoch overshoots it by
    less than one single-task epoch.
    """
    single = config.only(task)
    n_tasks = len(TASKS)
    steps = config.steps_per_epoch
    if steps is None or steps < n_tasks:
        return single
    per_epoch = max(1, round(steps / n_tasks))
    return single.replace(
        steps_per_epoch=per_epoch,
        epochs=math.ceil(config.epochs * steps / per_epoch),
        patience=math.ceil(config.patience * steps / per_epoch),
    )


def _peer_results(
    prepared: Prepared, seeds: Sequence[int], say: Progress
) -> tuple[dict[str, dict[str, list[dict[str, float]]]], dict[str, Any]]:
    """{task: {peer: [metrics per seed]}} and the chosen hyperparameters, selected on validation."""
    from unirank.training.peers import PEERS_BY_TASK, build_peer, grid

    seeded = {"als", "bpr"}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    chosen: dict[str, Any] = {}
    names = sorted({peer for peers in PEERS_BY_TASK.values() for peer in peers})
    for peer in names:
        tasks = [t for t, peers in PEERS_BY_TASK.items() if peer in peers and t in prepared.test_rows]
        for seed in seeds if peer in seeded else seeds[:1]:
            started = time.perf_counter()
            best: dict[str, tuple[float, dict[str, Any], Scorer]] = {}
            for params in grid(peer):
                scorer = build_peer(peer, prepared.peer_data, seed, **params)
                validation = evaluate_scorers(
                    {peer: scorer},
                    prepared.dataset,
                    "validation",
                    prepared.catalog,
                    0,
                    0,
                    tasks={t: prepared.validation_rows[t] for t in tasks if t in prepared.validation_rows},
                )
                for task, by in validation.items():
                    value = by[peer][TARGET_METRIC]
                    if task not in best or value > best[task][0]:
                        best[task] = (value, params, scorer)
            for task, (value, params, scorer) in best.items():
                test = evaluate_scorers(
                    {peer: scorer},
                    prepared.dataset,
                    "test",
                    prepared.catalog,
                    0,
                    0,
                    tasks={task: prepared.test_rows[task]},
                )
                copies = len(seeds) if peer not in seeded else 1  # deterministic peers: same every seed
                results.setdefault(task, {}).setdefault(peer, []).extend([test[task][peer]] * copies)
                chosen.setdefault(peer, {}).setdefault(task, []).append(
                    {"seed": seed, **params, "validation": value}
                )
            say(
                f"[peers] {peer} seed {seed}: {time.perf_counter() - started:.0f}s; test ndcg@10 "
                + " ".join(f"{t}={results[t][peer][-1][TARGET_METRIC]:.4f}" for t in best)
            )
    return results, chosen


def _mean_std(runs: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = [m for m in METRICS if all(m in r for r in runs)]
    values = {m: np.array([r[m] for r in runs], dtype=np.float64) for m in keys}
    return (
        {m: float(v.mean()) for m, v in values.items()},
        {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
    )


def _delta(unified: Mapping[str, float], other: Mapping[str, float]) -> dict[str, float | None]:
    return {m: (unified[m] - other[m]) / other[m] if other.get(m) else None for m in unified if m in other}


def summarise(
    runs: Sequence[JobResult],
    popularity: Mapping[str, Mapping[str, float]],
    peers: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    ablations: Sequence[str] = (),
) -> dict[str, Any]:
    """The comparison's ``tasks`` (means), ``std``, ``delta`` (unified vs each) and ``targets``."""
    tasks: dict[str, Any] = {}
    std: dict[str, Any] = {}
    delta: dict[str, Any] = {}
    for spec in TASKS:
        task = spec.name
        by_method: dict[str, list[Mapping[str, float]]] = {}
        for run in runs:
            if task not in run.test:
                continue
            method = SINGLE_TASK if run.variant.startswith(f"{SINGLE_TASK}:") else run.variant
            by_method.setdefault(method, []).append(run.test[task])
        if UNIFIED not in by_method:
            continue
        tasks[task], std[task], delta[task] = {}, {}, {}
        for method in (UNIFIED, SINGLE_TASK, NO_TASK_TYPE, *ablations):
            if method in by_method:
                tasks[task][method], std[task][method] = _mean_std(by_method[method])
        if task in popularity:
            tasks[task][POPULARITY] = {m: float(v) for m, v in popularity[task].items() if m in METRICS}
            std[task][POPULARITY] = dict.fromkeys(tasks[task][POPULARITY], 0.0)
        tasks[task][PEERS], std[task][PEERS] = {}, {}
        for peer, peer_runs in peers.get(task, {}).items():
            tasks[task][PEERS][peer], std[task][PEERS][peer] = _mean_std(peer_runs)
        unified = tasks[task][UNIFIED]
        for method, values in tasks[task].items():
            if method == UNIFIED:
                continue
            if method == PEERS:
                delta[task][PEERS] = {peer: _delta(unified, v) for peer, v in values.items()}
            else:
                delta[task][method] = _delta(unified, values)
    return {"tasks": tasks, "std": std, "delta": delta, "targets": targets(tasks)}


def targets(tasks: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it compared and whether it passed."""
    out: dict[str, Any] = {}
    for task, by in tasks.items():
        unified = by[UNIFIED][TARGET_METRIC]
        if SINGLE_TASK in by:
            single = by[SINGLE_TASK][TARGET_METRIC]
            out[f"{task}: unified >= single_task"] = {
                "unified": unified,
                "other": single,
                "pass": unified >= single,
            }
        if POPULARITY in by:
            pop = by[POPULARITY][TARGET_METRIC]
            out[f"{task}: unified > popularity"] = {"unified": unified, "other": pop, "pass": unified > pop}
        if task in PEER_TARGET_TASKS and by.get(PEERS):
            name, best = max(by[PEERS].items(), key=lambda kv: kv[1][TARGET_METRIC])
            out[f"{task}: unified >= best peer ({name})"] = {
                "unified": unified,
                "other": best[TARGET_METRIC],
                "pass": unified >= best[TARGET_METRIC],
            }
    return out


def run_compare(
    data: str,
    seeds: int = 3,
    config: TrainConfig | None = None,
    workers: int = 1,
    rows_per_task: int = 0,
    ablations: Sequence[str] = (),
    with_peers: bool = True,
    progress: Progress | None = _stderr,
    single_task: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the whole comparison on ``data`` and return its JSON-ready result.

    ``rows_per_task`` caps the test rows ranked per task (0: all of them); the same rows serve
    every method and seed. ``workers`` > 1 trains that many models at once in subprocesses.
    """
    from unirank.training.pipeline import prepare_data
    from unirank.training.sources import load_logs, parse_data_spec

    say = progress or (lambda _message: None)
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; known: {sorted(ABLATIONS)}")
    if seeds < 1 or workers < 1:
        raise ValueError("seeds and workers must be >= 1")
    if with_peers:
        from unirank.training.peers import require_peer_libraries

        require_peer_libraries()
    started = time.perf_counter()
    spec = parse_data_spec(data)
    config = (config or TrainConfig()).replace(data=str(spec))
    log = load_logs(spec, size=config.size, seed=0)
    data_prep = prepare_data(log, config.max_history, config.max_query_tokens, config.split_fractions)
    dataset, catalog = data_prep.dataset, data_prep.catalog
    counts = dataset.counts()
    say(
        f"[compare] {spec}: {log.n_items} items, {log.n_users} users, {len(log.events)} events; rows "
        + ", ".join(f"{t} {'/'.join(str(n) for n in c.values())}" for t, c in counts.items())
        + f" (train/validation/test; {time.perf_counter() - started:.0f}s)"
    )
    # Decided before any model trains: a use-case without enough labels is left out of every
    # method (and said so), never found missing by a single-task model after the others trained.
    config, coverage = plan_tasks(counts, config, log, lambda line: say(f"[compare] {line}"))
    trained = set(coverage.trained)
    prepared = Prepared(
        dataset=dataset,
        catalog=catalog,
        test_rows=_only(evaluation_rows(dataset, "test", rows_per_task or len(dataset), 0), trained),
        validation_rows=_only(
            evaluation_rows(dataset, "validation", config.validation_rows_per_task, 0), trained
        ),
    )
    seed_list = list(range(seeds))
    jobs = model_jobs(config, seed_list, ablations, coverage.trained, single_task)
    for job in jobs:
        job.verbose = progress is not None
    say(f"[compare] {len(jobs)} models to train ({workers} at a time), then popularity and peers")
    runs = _run_jobs(jobs, prepared, workers, say)

    popularity = evaluate_scorers(
        {POPULARITY: TaskAwarePopularityScorer(catalog, None)},
        dataset,
        "test",
        catalog,
        0,
        0,
        tasks=prepared.test_rows,
    )
    popularity_metrics = {task: by[POPULARITY] for task, by in popularity.items()}
    peers: dict[str, dict[str, list[dict[str, float]]]] = {}
    peer_params: dict[str, Any] = {}
    if with_peers:
        from unirank.training.examples import UserSplit
        from unirank.training.peers import PeerData

        _limit_blas_threads()
        prepared.peer_data = PeerData.build(log, UserSplit.from_logs(log, config.split_fractions), catalog)
        peers, peer_params = _peer_results(prepared, seed_list, say)

    result = summarise(runs, popularity_metrics, peers, ablations)
    result.update(
        {
            "data": str(spec),
            "skipped_tasks": coverage.skipped,
            "seeds": seed_list,
            "config": config.to_dict(),
            "single_task_config": {task: dict(values) for task, values in (single_task or {}).items()},
            "ablations": {name: ABLATIONS[name] for name in ablations},
            "protocol": {
                "split": f"per user by time, fractions {list(config.split_fractions)} "
                "(train/validation/test)",
                "test_rows": {task: len(rows) for task, rows in prepared.test_rows.items()},
                "ranking": "full ranking over each task's candidate set; seen items excluded where the "
                "use-case never recommends them; one positive set per row",
                "selection": "early stopping and peer hyperparameters on the validation split only",
                "budget": "every model: the same maximum steps, batch size and negatives; a single-task "
                "model spends all of it on its task and is validated as often per row of its task "
                f"(every steps_per_epoch / {len(TASKS)} steps, rounded; patience and max epochs scaled to "
                "match)",
            },
            "peer_params": peer_params,
            "runs": [asdict(run) for run in runs],
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    say(f"[compare] finished in {result['seconds']:.0f}s")
    return result


def _only(rows: dict[str, np.ndarray], tasks: set[str]) -> dict[str, np.ndarray]:
    return {task: value for task, value in rows.items() if task in tasks}


def _limit_blas_threads() -> None:
    """implicit warns (and slows down) when BLAS runs its own thread pool next to its loops."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, "blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with implicit's dependencies
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _run_jobs(jobs: Sequence[Job], prepared: Prepared, workers: int, say: Progress) -> list[JobResult]:
    if workers == 1:
        _WORKER_STATE["prepared"] = prepared
        try:
            results = []
            with progress_bar(len(jobs), "compare", unit="model") as bar:
                for job in jobs:
                    results.append(_run_job(job, say))
                    bar.update(1)
            return results
        finally:
            _WORKER_STATE.pop("prepared", None)
    with tempfile.TemporaryDirectory(prefix="unirank-compare-") as tmp:
        path = Path(tmp) / "prepared.pkl"
        with path.open("wb") as handle:
            pickle.dump(prepared, handle, protocol=pickle.HIGHEST_PROTOCOL)
        context = multiprocessing.get_context("spawn")  # no forked torch or BLAS thread state
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(str(path),)
        ) as pool:
            futures = [pool.submit(_run_job, job) for job in jobs]
            with progress_bar(len(jobs), "compare", unit="model") as bar:
                for future in concurrent.futures.as_completed(futures):
                    future.result()  # a failed job fails the comparison now, not at the end
                    bar.update(1)
            return [future.result() for future in futures]


def format_table(result: Mapping[str, Any]) -> str:
    """Plain text: per task and method, NDCG@10 / Recall@10 / MRR as mean ± std, and the delta."""
    lines = []
    header = f"{'task':<14} {'method':<26} {'ndcg@10':>17} {'recall@10':>17} {'mrr':>17} {'unified vs':>10}"
    lines += [header, "-" * len(header)]
    for task, by in result["tasks"].items():
        for method, values, spread, delta in _rows(result, task, by):
            cells = [
                f"{values.get(m, float('nan')):.4f} ± {spread.get(m, 0.0):.4f}"
                for m in (TARGET_METRIC, f"recall@{metrics.K_DEFAULT}", "mrr")
            ]
            change = "" if delta is None else f"{delta:+.1%}"
            lines.append(f"{task:<14} {method:<26} {cells[0]:>17} {cells[1]:>17} {cells[2]:>17} {change:>10}")
    lines.append("")
    for task, reason in result.get("skipped_tasks", {}).items():
        lines.append(f"SKIPPED  {task}: {reason}")
    for name, target in result.get("targets", {}).items():
        lines.append(
            f"{'PASS' if target['pass'] else 'MISS'}  {name}: "
            f"{target['unified']:.4f} vs {target['other']:.4f}"
        )
    return "\n".join(lines)


def _rows(
    result: Mapping[str, Any], task: str, by: Mapping[str, Any]
) -> list[tuple[str, Mapping[str, float], Mapping[str, float], float | None]]:
    rows = []
    std, delta = result["std"][task], result["delta"][task]
    for method, values in by.items():
        if method == PEERS:
            for peer, peer_values in values.items():
                change = delta.get(PEERS, {}).get(peer, {}).get(TARGET_METRIC)
                rows.append((f"peer:{peer}", peer_values, std[PEERS][peer], change))
        else:
            change = None if method == UNIFIED else delta.get(method, {}).get(TARGET_METRIC)
            rows.append((method, values, std[method], change))
    return rows
