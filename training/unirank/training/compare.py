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
seeds per task, method and metric, and the relative delta of the unified model against each;
:mod:`unirank.training.compare_report` summarises and prints it.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact import TASKS, Catalog
from unirank.training.baselines import CoEngagement, TaskAwarePopularityScorer
from unirank.training.compare_report import (
    NO_TASK_TYPE,
    POPULARITY,
    SINGLE_TASK,
    TARGET_METRIC,
    UNIFIED,
    JobResult,
    summarise,
)
from unirank.training.config import TrainConfig
from unirank.training.coverage import plan_tasks
from unirank.training.dataset import Dataset
from unirank.training.evaluate import evaluate_scorers, evaluation_rows
from unirank.training.examples import TrainingPlays
from unirank.training.progress import progress_bar
from unirank.training.scoring import Scorer

Progress = Callable[[str], None]


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
class Prepared:
    """What every job shares: the split data set and the test rows every method ranks."""

    dataset: Dataset
    catalog: Catalog
    test_rows: dict[str, np.ndarray]
    validation_rows: dict[str, np.ndarray]
    co_engagement: CoEngagement | None = None
    """The training split's co-engagement, the model's co-engagement features (as ``unirank train``'s)."""
    peer_data: Any = None
    plays: Any = None
    """The training plays (``TrainingPlays``) an ALS init or the MF score fits; None if unused."""


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
            prepared.dataset,
            prepared.catalog,
            job.config,
            progress=lambda line: emit(f"{label} {line}"),
            co_engagement=prepared.co_engagement,
            plays=prepared.plays,
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
    ablation_seeds: int | None = None,
) -> list[Job]:
    """Every model of the comparison: per seed the unified model, its ablations, and one per task
    of ``tasks`` (None: every task; a skipped use-case gets no model and is evaluated by none).

    ``single_task`` holds tuned fields per task (``unirank tune --single-task``) for its model.
    ``ablation_seeds`` N trains the ablations (``no_task_type`` and ``ablations``) on the first N
    seeds only (None: every seed); no target reads them, and the report says how many seeds they had.
    """
    names = tuple(tasks) if tasks is not None else tuple(spec.name for spec in TASKS)
    jobs = []
    for index, seed in enumerate(seeds):
        base = config.replace(seed=seed)
        jobs.append(Job(UNIFIED, seed, base, names))
        if ablation_seeds is None or index < ablation_seeds:
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
    ablation_seeds: int | None = None,
) -> dict[str, Any]:
    """Run the whole comparison on ``data`` and return its JSON-ready result.

    ``rows_per_task`` caps the test rows ranked per task (0: all of them); the same rows serve
    every method and seed. ``workers`` > 1 trains that many models at once in subprocesses.
    ``ablation_seeds`` N trains ``no_task_type`` and the ``ablations`` on seeds 0..N-1 only.
    """
    from unirank.training.pipeline import prepare_data_for
    from unirank.training.sources import load_logs, parse_data_spec

    say = progress or (lambda _message: None)
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; known: {sorted(ABLATIONS)}")
    if seeds < 1 or workers < 1:
        raise ValueError("seeds and workers must be >= 1")
    if ablation_seeds is not None and not 1 <= ablation_seeds <= seeds:
        raise ValueError("--ablation-seeds must be between 1 and --seeds")
    if with_peers:
        from unirank.training.peers import require_peer_libraries

        require_peer_libraries()
    started = time.perf_counter()
    spec = parse_data_spec(data)
    config = (config or TrainConfig()).replace(data=str(spec))
    log = load_logs(spec, size=config.size, seed=0)
    data_prep = prepare_data_for(log, config)
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
        co_engagement=data_prep.co_engagement,
    )
    seed_list = list(range(seeds))
    jobs = model_jobs(config, seed_list, ablations, coverage.trained, single_task, ablation_seeds)
    for job in jobs:
        job.verbose = progress is not None
    if any(job.config.item_init != "random" or job.config.mf_factors for job in jobs):
        prepared.plays = TrainingPlays.from_logs(log, data_prep.split, catalog)
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
                "seeds": _seeds_protocol(seed_list, ablation_seeds, ablations),
                "split": f"per user by time, fractions {list(config.split_fractions)} "
                "(train/validation/test)",
                "test_rows": {task: len(rows) for task, rows in prepared.test_rows.items()},
                "ranking": "full ranking over each task's candidate set; seen items excluded where the "
                "use-case never recommends them; one positive set per row",
                "selection": "early stopping, head calibration and peer hyperparameters on the validation "
                f"split only (at most {config.validation_rows_per_task} rows per use-case, drawn per seed, "
                "the same rows at every epoch)",
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


def _seeds_protocol(seeds: Sequence[int], ablation_seeds: int | None, ablations: Sequence[str]) -> str:
    """Which seeds each method trained on, as the report states it."""
    every = f"unified and single_task: seeds {list(seeds)}"
    if ablation_seeds is None or ablation_seeds >= len(seeds):
        return f"{every}; {', '.join([NO_TASK_TYPE, *ablations])}: the same seeds"
    few = "seed 0 only" if ablation_seeds == 1 else f"seeds {list(seeds[:ablation_seeds])} only"
    return (
        f"{every}; {', '.join([NO_TASK_TYPE, *ablations])}: {few} (--ablation-seeds {ablation_seeds}: "
        "no target reads them; their ± is over those seeds)"
    )


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
