"""Validation NDCG@10 per use-case of trained artifacts' final models (after head calibration).

`unirank train` prints validation NDCG per epoch before calibration and test NDCG at the end; this
ranks the same validation sample the run selected on (``validation_rows_per_task`` rows per task,
seeded by the run's seed and the task id) with the artifact's final weights, so variants can be
chosen on validation. The test split is not read.

    python scripts/validation_ndcg.py build/tf/ml-before build/tf/ml-after
"""

from __future__ import annotations

import json
import sys

import torch

from unirank.artifact import TASKS, load_artifact
from unirank.model.net import build_model_from_checkpoint
from unirank.training.evaluate import sample_rows, validation_ndcg
from unirank.training.pipeline import prepare_data
from unirank.training.sources import load_logs, parse_data_spec


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    for path in paths:
        artifact = load_artifact(path)
        recorded = artifact.manifest["training_data"]
        config = artifact.manifest["training"]["config"]
        log = load_logs(parse_data_spec(recorded["data"]), size=recorded["size"], seed=int(recorded["seed"]))
        encoder = artifact.encoder()
        dataset = prepare_data(
            log,
            encoder.max_history,
            encoder.max_query_tokens,
            tuple(recorded["split"]["fractions"]),
            catalog=artifact.catalog,
            co_engagement_window=int(config["co_engagement_window"]),
        ).dataset
        trained = artifact.manifest["trained_tasks"]
        names = {int(spec.task_type): spec.name for spec in TASKS if spec.name in trained}
        rows = {
            task: sample_rows(
                dataset.rows("validation", task),
                int(config["validation_rows_per_task"]),
                int(config["seed"]) + task,
            )
            for task in names
        }
        model = build_model_from_checkpoint(torch.load(artifact.torch_path, weights_only=True))
        scores = validation_ndcg(model, dataset, rows, artifact.catalog)
        validation = {names[task]: round(float(value), 4) for task, value in scores.items()}
        print(
            json.dumps(
                {
                    "artifact": path,
                    "best_epoch": artifact.manifest["training"]["best_epoch"],
                    "validation_ndcg@10": validation,
                    "validation_mean": round(sum(validation.values()) / len(validation), 4),
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
