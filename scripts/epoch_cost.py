"""What one training epoch costs: optimizer steps against one validation pass, with and without
time features (a 50-step run per variant, one torch thread).

    python scripts/epoch_cost.py movielens:../shared/data/movielens-small default
"""

import json
import sys
import time

import torch

from unirank.artifact import TASKS
from unirank.training.config import TrainConfig
from unirank.training.evaluate import sample_rows, validation_ndcg
from unirank.training.item_init import plays_if_needed
from unirank.training.pipeline import prepare_data
from unirank.training.sources import load_logs
from unirank.training.train import build_model, train_model


def main() -> None:
    torch.set_num_threads(1)
    spec, size = sys.argv[1], sys.argv[2]
    t = time.perf_counter()
    log = load_logs(spec, size=size, seed=0)
    prep = prepare_data(log, 20, 8)
    t_prep = time.perf_counter() - t
    ds, cat = prep.dataset, prep.catalog
    out = {"data": spec, "size": size, "prepare_s": round(t_prep, 1)}
    for tf in (False, True):
        cfg = TrainConfig.preset(
            size, 0, data=spec, time_features=tf, steps_per_epoch=50, epochs=1, calibrate_heads=False
        )
        model = build_model(cat, cfg, prep.co_engagement)
        present = [int(s.task_type) for s in TASKS if len(ds.rows("validation", int(s.task_type)))]
        rows = {t: sample_rows(ds.rows("validation", t), 600, t) for t in present}
        t = time.perf_counter()
        validation_ndcg(model, ds, rows, cat)
        val = time.perf_counter() - t
        t = time.perf_counter()
        plays = plays_if_needed(cfg, log, prep.split, cat)
        train_model(ds, cat, cfg, progress=None, co_engagement=prep.co_engagement, plays=plays)
        run = time.perf_counter() - t
        out[f"time_features={tf}"] = {
            "validation_pass_s": round(val, 1),
            "50_steps_plus_validation_s": round(run, 1),
            "per_step_s": round((run - val) / 50, 3),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
