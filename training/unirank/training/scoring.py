"""The scorer contract shared by evaluation, the baselines, the peers and the comparison: a batch of
rows to rank and a scorer that gives every catalogue item a score for each row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unirank.artifact import ModelInputs
from unirank.training.dataset import Dataset


@dataclass
class Batch:
    """Rows to rank: their model inputs (history capped as served) and, for scorers that want it,
    each row's full play history from the dataset."""

    inputs: ModelInputs
    dataset: Dataset
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def history(self, i: int) -> np.ndarray:
        """Every item index the user of the batch's i-th row played before the row's time."""
        return self.dataset.history(int(self.rows[i]))


Scorer = Callable[[Batch], np.ndarray]
"""A batch of B rows (candidates ignored) -> scores [B, n_items]; column j is item index j+1."""
