"""Validation NDCG@10 of ALS's signal alone: the ALS peer's exact fold-in against the graph's form
of it (the MF score of ``mf_factors``: whitened item factors, the served history's mean), for a
few factor counts and regularisations. No model is trained; the test split is not read.

    python scripts/mf_signal_ndcg.py synthetic sparse      # data spec, synthetic size

The rows are the seed-0 validation sample (600 per use-case) that a seed-0 run selects and
calibrates on, and that ``unirank compare`` gives the peers.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from unirank.training.baselines import popularity_score
from unirank.training.evaluate import evaluate_scorers, evaluation_rows
from unirank.training.examples import TrainingPlays
from unirank.training.item_init import ALS_PARAMS, mf_item_factors
from unirank.training.peers import TIE_BREAK, ALSScorer, PeerData
from unirank.training.pipeline import prepare_data
from unirank.training.scoring import Batch, Scorer
from unirank.training.sources import load_logs, parse_data_spec

SETTINGS = ((16, 0.01), (16, ALS_PARAMS["regularization"]), (32, ALS_PARAMS["regularization"]))
TASKS = ("notification", "category")


def main(spec: str, size: str) -> None:
    log = load_logs(parse_data_spec(spec), size=size, seed=0)
    data = prepare_data(log, 20, 8)
    peer = PeerData.build(log, data.split, data.catalog)
    plays = TrainingPlays.from_logs(log, data.split, data.catalog)
    rows = {t: r for t, r in evaluation_rows(data.dataset, "validation", 600, 0).items() if t in TASKS}
    tie = TIE_BREAK * popularity_score(np.asarray(data.catalog.popularity))
    for factors, regularization in SETTINGS:
        als = ALSScorer(peer, 0, factors=factors, regularization=regularization, alpha=ALS_PARAMS["alpha"])
        table = mf_item_factors(plays, factors, seed=0, regularization=regularization)

        def mf_score(batch: Batch, table: np.ndarray = table) -> np.ndarray:
            history = batch.inputs.history
            played = (history > 0)[:, :, None]
            mean = (table[history] * played).sum(1) / np.maximum(played.sum(1), 1)
            return mean @ table[1:].T + tie

        scorers: dict[str, Scorer] = {"als_fold_in": als, "mf_score": mf_score}
        scores = evaluate_scorers(scorers, data.dataset, "validation", data.catalog, 0, 0, tasks=rows)
        for task, by in scores.items():
            result = {name: round(m["ndcg@10"], 4) for name, m in by.items()}
            print(json.dumps({"factors": factors, "regularization": regularization, "task": task, **result}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
