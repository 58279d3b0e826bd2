"""Item (and user) embeddings initialised from a matrix factorisation of the training plays.

``item_init = "als"`` fits ``implicit``'s ALS (Hu, Koren, Volinsky 2008), the classic peer that
beats a randomly initialised model on sparse listening logs, on the training split's user x item
plays with ``factors = dim``, and starts ``item_emb`` from its item factors (``"als_users"``:
``user_emb`` from its user factors too), rescaled to the default initialisation's spread, so the
learning rate and weight decay mean what they meant. Training then moves them like any other
weights: nothing in the graph, the serving inputs or the artifact changes. The fit reads the
training split only, as the peers do.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from unirank.artifact import Catalog
from unirank.model.net import UniRankModel
from unirank.training.examples import TrainingPlays, UserSplit
from unirank.training.logs import LogData

INIT_STD = 0.05
"""The spread of the model's default embedding initialisation (``UniRankModel``), matched here."""
ALS_PARAMS: dict[str, Any] = {"regularization": 0.1, "alpha": 10.0, "iterations": 15}
"""The factorisation's settings (``factors`` is the model's ``dim``)."""


def als_factors(user_items: Any, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(user factors [n_users, dim], item factors [n_items + 1, dim]) of ALS on ``user_items``."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError:
        raise RuntimeError("item_init 'als' needs implicit: pip install 'unirank[quality]'") from None
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # implicit's advice to do just that
        model = AlternatingLeastSquares(factors=dim, random_state=seed, num_threads=1, **ALS_PARAMS)
        model.fit(user_items.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def _rescaled(factors: np.ndarray) -> torch.Tensor:
    spread = float(factors.std())
    return torch.as_tensor(factors * (INIT_STD / spread if spread > 0 else 1.0), dtype=torch.float32)


def init_from_als(model: UniRankModel, plays: TrainingPlays, mode: str, seed: int) -> None:
    """Overwrite ``model``'s item (and, for ``als_users``, user) embeddings with ALS factors.

    An item or user without training plays keeps its random vector; the padding rows stay zero.
    """
    users, items = als_factors(plays.user_items, model.config.dim, seed)
    played_items = np.asarray(plays.user_items.sum(axis=0)).ravel() > 0
    played_items[0] = False
    with torch.no_grad():
        weight = model.item_emb.weight
        rows = torch.as_tensor(np.flatnonzero(played_items))
        weight[rows] = _rescaled(items[played_items]).to(weight.device)
        if mode == "als_users":
            played_users = np.asarray(plays.user_items.sum(axis=1)).ravel() > 0
            target = plays.user_index[played_users]
            keep = target > 0
            user_weight = model.user_emb.weight
            user_weight[torch.as_tensor(target[keep])] = _rescaled(users[played_users][keep]).to(
                user_weight.device
            )


def plays_if_needed(item_init: str, log: LogData, split: UserSplit, catalog: Catalog) -> TrainingPlays | None:
    """The training plays an ``item_init`` fits, or None for ``random`` (nothing to fit)."""
    return None if item_init == "random" else TrainingPlays.from_logs(log, split, catalog)
