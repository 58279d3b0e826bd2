"""ALS-initialised embeddings (``item_init``): the model starts where ALS ends, on training plays only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unirank.training.calibration import calibrated_features
from unirank.training.config import ITEM_INITS, TrainConfig
from unirank.training.examples import TRAIN, PlayHistory, TrainingPlays
from unirank.training.item_init import ALS_PARAMS, INIT_STD, als_factors, init_from_als, mf_item_factors
from unirank.training.pipeline import PreparedData, prepare_data
from unirank.training.sources import load_logs
from unirank.training.train import build_model, train_model

pytest.importorskip("implicit")


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return prepare_data(load_logs("synthetic", size="tiny", seed=0), 20, 8)


@pytest.fixture(scope="module")
def plays(data: PreparedData) -> TrainingPlays:
    return TrainingPlays.from_logs(data.log, data.split, data.catalog)


def _cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return (unit @ unit.T)[np.triu_indices(len(vectors), k=1)]


def test_the_plays_are_the_training_split_only(data: PreparedData, plays: TrainingPlays) -> None:
    history = PlayHistory(data.log)
    train = data.split.assign(history.user, history.time) == TRAIN
    assert 0 < train.sum() < len(train)  # the fixture has plays outside the training split
    to_index = np.array([data.catalog.items.index(x) for x in data.log.items.item_ids])
    pairs = zip(history.user[train].tolist(), to_index[history.item[train]].tolist(), strict=True)
    expected = set(pairs)
    coo = plays.user_items.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist(), strict=True)) == expected
    assert np.all(coo.data == 1.0)


def test_als_init_starts_the_model_at_als_factors(data: PreparedData, plays: TrainingPlays) -> None:
    config = TrainConfig.tiny(item_init="als_users")
    torch.manual_seed(0)
    model = build_model(data.catalog, config, data.co_engagement)
    random_items = model.item_emb.weight.detach().clone()
    init_from_als(model, plays, "als_users", seed=0)
    users, items = als_factors(plays.user_items, config.dim, seed=0)
    played = np.flatnonzero(np.asarray(plays.user_items.sum(axis=0)).ravel() > 0)
    weight = model.item_emb.weight.detach().numpy()
    # The same geometry as ALS's item factors (item-item cosines), at the default init's spread.
    assert np.corrcoef(_cosines(weight[played]), _cosines(items[played]))[0, 1] > 0.999
    assert float(weight[played].std()) == pytest.approx(INIT_STD, rel=1e-3)
    assert np.corrcoef(_cosines(random_items.numpy()[played]), _cosines(items[played]))[0, 1] < 0.5
    unplayed = np.setdiff1d(np.arange(1, len(weight)), played)
    assert torch.equal(model.item_emb.weight[unplayed], random_items[unplayed])
    assert not model.item_emb.weight[0].any()
    # A user's embedding scores the items as ALS's user factors do.
    row = int(np.argmax(np.asarray(plays.user_items.sum(axis=1)).ravel()))
    served = model.user_emb.weight[int(plays.user_index[row])].detach().numpy() @ weight[played].T
    assert np.corrcoef(served, users[row] @ items[played].T)[0, 1] > 0.999


def test_the_knob_is_validated_needs_the_plays_and_is_searched(data: PreparedData) -> None:
    with pytest.raises(ValueError, match="item_init"):
        TrainConfig(item_init="svd")
    config = TrainConfig.tiny(item_init="als", epochs=1)
    with pytest.raises(ValueError, match="need the training plays"):
        train_model(data.dataset, data.catalog, config, progress=None)
    optuna = pytest.importorskip("optuna")
    from unirank.training.tune import _as_params, suggest

    tasks = ("notification", "category")
    for init, factors in zip(ITEM_INITS, (0, 16, 0, 16), strict=True):
        given = TrainConfig(item_init=init, mf_factors=factors)
        values = suggest(optuna.trial.FixedTrial(_as_params(given, tasks)), given, tasks)
        assert (values["item_init"], values["mf_factors"]) == (init, factors)
    assert TrainConfig(**config.to_dict()).item_init == "als"  # the manifest records it


def test_the_mf_table_scores_a_history_as_als_fold_in_without_confidence(
    data: PreparedData, plays: TrainingPlays
) -> None:
    table = mf_item_factors(plays, 8, seed=0)
    _, items = als_factors(plays.user_items, 8, seed=0)
    played = np.asarray(plays.user_items.sum(axis=0)).ravel() > 0
    played[0] = False
    y = np.where(played[:, None], items, 0.0).astype(np.float64)
    fold_in = y @ np.linalg.inv(y.T @ y + ALS_PARAMS["regularization"] * np.eye(8)) @ y.T
    got = (table.astype(np.float64) @ table.T.astype(np.float64))[played][:, played]
    want = fold_in[played][:, played]
    scale = float((got * want).sum() / (want * want).sum())
    # z_h . z_c = scale * y_h' G^-1 y_c for every pair of played items
    assert scale > 0 and np.abs(got - scale * want).max() < 1e-4 * np.abs(got).max()
    assert not table[~played].any()
    assert float((table[played] ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)
    model = build_model(data.catalog, TrainConfig.tiny(mf_factors=8), data.co_engagement, table)
    assert ("mf", model.config.mf_index, (1.0, 2.0, 4.0, 8.0)) in calibrated_features(model)
    assert torch.equal(model.item_factors, torch.as_tensor(table))
