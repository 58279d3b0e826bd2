"""The online side of the time features: recorded events folded into the serving model's item activity.

The artifact ships every item's recent activity at the end of its training logs
(:class:`unirank.artifact.activity.ItemActivity`); each event the online store accepts is folded in
with the same step training used, so a candidate's recent popularity and age at a request's time
are computed from the same events offline and online. The state is per process and per model
version: a new version starts again from its own artifact (a refit trains on the events logged
since), and replicas each fold the events they receive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unirank.artifact.activity import ItemActivity
from unirank.artifact.catalog import Vocab
from unirank.server.online_store.base import RecentEvent


def fold_events(activity: ItemActivity, items: Vocab, events: Sequence[RecentEvent]) -> int:
    """Fold ``events`` about items of ``items`` into ``activity``; returns how many were folded."""
    indices = np.array([items.index(event.item_id) for event in events], dtype=np.int64)
    times = np.array([event.event_time_ms for event in events], dtype=np.float64)
    known = indices > 0
    activity.record(indices[known], times[known])
    return int(known.sum())
