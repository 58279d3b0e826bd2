"""The synthetic generator grows with ``--items``: a large catalogue's affinities are gathered at
the pooled items instead of a product with every item (16 GB per chunk at a million items), and
both ways give the same numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unirank.training import synthetic
from unirank.training.sources import load_logs
from unirank.training.synthetic import SyntheticConfig


def test_gathered_affinities_equal_the_full_product(monkeypatch: pytest.MonkeyPatch) -> None:
    config = dataclasses.replace(SyntheticConfig.preset("tiny"), n_items=600)
    world = synthetic._World.create(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((5000, world.item_vecs.shape[1]))
    pool = rng.integers(0, 600, size=(5000, 40))
    full = world._affinity(vecs, pool)
    monkeypatch.setattr(synthetic, "SCORE_EVERY_ITEM_MAX", 100)
    gathered = world._affinity(vecs, pool)
    np.testing.assert_allclose(gathered, full, rtol=1e-5, atol=1e-5)
    expected = np.einsum("npd,nd->np", world.item_vecs[pool], vecs)
    np.testing.assert_allclose(gathered, expected, rtol=1e-4, atol=1e-4)


def test_items_sets_the_catalogue_size() -> None:
    log = load_logs("synthetic", size="tiny", items=900)
    assert log.n_items == 900 and log.provenance["items"] == 900
    assert int(log.events.item.max()) < 900
