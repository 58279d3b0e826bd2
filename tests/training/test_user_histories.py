"""The stored user histories: training plays only, distinct, newest kept, oldest first."""

from __future__ import annotations

import numpy as np

from unirank.training.dataset import catalog_from_logs
from unirank.training.examples import TRAIN, UserSplit
from unirank.training.logs import EventType
from unirank.training.pipeline import TrainConfig
from unirank.training.retrieval import user_histories
from unirank.training.sources import load_logs, parse_data_spec


def test_histories_hold_each_users_last_distinct_training_plays() -> None:
    log = load_logs(parse_data_spec("synthetic"), size="tiny", seed=0)
    split = UserSplit.from_logs(log)
    catalog = catalog_from_logs(log, split)
    max_len = 7
    indptr, items = user_histories(log, split, catalog, max_len)
    assert indptr.shape == (len(catalog.users) + 1,) and indptr[-1] == len(items)
    plays = log.events_of(EventType.PLAY)
    train = split.assign(plays.user, plays.timestamp_ms) == TRAIN
    for log_user in range(0, log.n_users, 37):
        mine = train & (plays.user == log_user)
        order = np.argsort(plays.timestamp_ms[mine], kind="stable")
        keys = [log.items.item_ids[i] for i in plays.item[mine][order]]
        expected = list(dict.fromkeys(reversed(keys)))[:max_len][::-1]  # newest copy places an item
        user = catalog.users.index(log.user_ids[log_user])
        got = [catalog.items.key(i) for i in items[indptr[user] : indptr[user + 1]]]
        assert got == expected, log_user
    assert TrainConfig.tiny().max_history >= max_len
