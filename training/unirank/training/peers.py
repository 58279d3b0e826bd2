"""Classic peers a team would pick instead of a unified model, from well-kept libraries.

* notification: ``implicit``'s ALS (Hu, Koren, Volinsky 2008) and BPR (Rendle et al. 2009), and
  item-kNN with cosine similarity (``implicit.nearest_neighbours.CosineRecommender``);
* related items: the same item-kNN's neighbours of the anchor, and session co-occurrence counts;
* search: BM25 (``rank_bm25``) over each item's title and the tags users gave it in training;
* category: the notification peers ranked inside the category (the evaluation restricts them);
* new releases: the notification peers ranked among the items new at the row's time (likewise).

Every peer learns from the training split only, has its hyperparameters chosen on the
validation split from a small grid (:data:`GRIDS`), and sees at test time the same information
as the model: a row's user and their full play history before the row's time (ALS recomputes the
user's factors from it; item-kNN sums its similarities; BPR cannot fold in new interactions, so
it uses the user's factors from training). Ties (an item no signal reaches) are broken by
popularity, as a practitioner would. ``implicit`` and ``rank_bm25`` come with the
``unirank[quality]`` extra and are imported only when a peer is built.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unirank.artifact import Catalog, TaskType
from unirank.artifact.text import tokenize
from unirank.training.baselines import CoEngagement, popularity_score
from unirank.training.examples import TRAIN, TrainingPlays, UserSplit, events_split
from unirank.training.logs import LogData
from unirank.training.scoring import Batch, Scorer

TIE_BREAK = 1e-6
"""Weight of popularity added to every peer's score: only decides between otherwise equal items."""

PEERS_BY_TASK: Mapping[str, tuple[str, ...]] = {
    "notification": ("als", "bpr", "item_knn"),
    "related_items": ("item_knn", "co_occurrence"),
    "search": ("bm25",),
    "category": ("als", "bpr", "item_knn"),
    "new_releases": ("als", "bpr", "item_knn"),
}
"""Which peers rank which task's rows."""

GRIDS: Mapping[str, Mapping[str, Sequence[Any]]] = {
    "als": {"factors": (16, 32, 64, 128), "regularization": (0.01, 0.1), "alpha": (1.0, 10.0)},
    "bpr": {"factors": (32, 64, 128), "learning_rate": (0.01, 0.05)},
    "item_knn": {"K": (20, 50, 200)},
    "co_occurrence": {"window": (3, 10, 30, 100)},
    "bm25": {"k1": (0.9, 1.5), "b": (0.4, 0.75)},
}
"""Hyperparameters tried per peer (every combination), the best on validation is kept."""


class PeerUnavailableError(RuntimeError):
    """A peer's library is not installed; the message names the extra to install."""


def require_peer_libraries() -> None:
    """Raise :class:`PeerUnavailableError` unless ``implicit`` and ``rank_bm25`` import."""
    try:
        import implicit  # noqa: F401
        import rank_bm25  # noqa: F401
    except ImportError as exc:
        raise PeerUnavailableError(
            f"the classic peers need {exc.name}: pip install 'unirank[quality]' (implicit, rank-bm25)"
        ) from None


@dataclass
class PeerData:
    """The training-split interactions every peer learns from."""

    catalog: Catalog
    user_items: Any
    """scipy CSR [n_users, n_items + 1] (catalogue columns): 1 where the user played the item in training."""
    log: LogData
    split: UserSplit
    item_texts: list[list[str]]
    """Per catalogue index: title words and the words of the tags users gave the item in training."""

    @classmethod
    def build(cls, log: LogData, split: UserSplit, catalog: Catalog) -> PeerData:
        matrix = TrainingPlays.from_logs(log, split, catalog).user_items
        to_index = np.array([catalog.items.index(x) for x in log.items.item_ids], dtype=np.int64)
        texts: list[list[str]] = [tokenize(title) for title in catalog.titles]
        tags = log.texts
        for r in np.flatnonzero(split.assign(tags.user, tags.timestamp_ms) == TRAIN).tolist():
            texts[int(to_index[tags.item[r]])].extend(tokenize(tags.text[r]))
        return cls(catalog=catalog, user_items=matrix, log=log, split=split, item_texts=texts)

    def histories(self, batch: Batch) -> Any:
        """CSR [B, n_items + 1] of each row's full play history (what the model's user had played)."""
        from scipy.sparse import csr_matrix

        rows = [np.unique(batch.history(i)) for i in range(len(batch))]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr),
            shape=(len(rows), len(self.catalog.items)),
        )


class _PeerScorer:
    """Shared shape of a peer: raw scores [B, n_items + 1] -> tie-broken scores [B, n_items]."""

    def __init__(self, data: PeerData) -> None:
        self.data = data
        self.tie_break = TIE_BREAK * popularity_score(np.asarray(data.catalog.popularity))

    def raw(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> np.ndarray:
        scores = np.asarray(self.raw(batch), dtype=np.float64)[:, 1:]
        return scores + self.tie_break


class ALSScorer(_PeerScorer):
    """implicit's ALS; each row's user factors recomputed from the row's history (fold-in)."""

    def __init__(self, data: PeerData, seed: int, factors: int, regularization: float, alpha: float) -> None:
        super().__init__(data)
        from implicit.cpu.als import AlternatingLeastSquares

        self.model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=15,
            random_state=seed,
            num_threads=1,
        )
        self.model.fit(data.user_items, show_progress=False)

    def raw(self, batch: Batch) -> np.ndarray:
        histories = self.data.histories(batch)
        users = self.model.recalculate_user(np.arange(len(batch)), histories)
        return np.asarray(users @ self.model.item_factors.T)


class BPRScorer(_PeerScorer):
    """implicit's BPR; users keep their training factors (BPR has no fold-in)."""

    def __init__(self, data: PeerData, seed: int, factors: int, learning_rate: float) -> None:
        super().__init__(data)
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        self.model = BayesianPersonalizedRanking(
            factors=factors,
            learning_rate=learning_rate,
            regularization=0.01,
            iterations=100,
            random_state=seed,
            num_threads=1,
        )
        self.model.fit(data.user_items, show_progress=False)

    def raw(self, batch: Batch) -> np.ndarray:
        users = self.model.user_factors[batch.dataset.user[batch.rows]]
        return np.asarray(users @ self.model.item_factors.T)


class ItemKNNScorer(_PeerScorer):
    """Item-kNN with cosine similarity: a user row sums its history's neighbours, a related row
    takes the anchor's."""

    def __init__(self, data: PeerData, seed: int, K: int) -> None:
        super().__init__(data)
        from implicit.nearest_neighbours import CosineRecommender

        self.model = CosineRecommender(K=K, num_threads=1)
        with warnings.catch_warnings():  # implicit hands itself a COO matrix and then warns about it
            warnings.simplefilter("ignore")
            self.model.fit(data.user_items, show_progress=False)
        self.similarity = self.model.similarity.tocsr()

    def raw(self, batch: Batch) -> np.ndarray:
        inputs = batch.inputs
        from_history = np.asarray((self.data.histories(batch) @ self.similarity).todense())
        related = np.flatnonzero((inputs.task == TaskType.RELATED_ITEMS) & (inputs.anchor_item > 0))
        if len(related):
            from_history[related] = np.asarray(self.similarity[inputs.anchor_item[related]].todense())
        return from_history


class CoOccurrenceScorer(_PeerScorer):
    """How often the anchor and an item were played within ``window`` plays by one user in training."""

    def __init__(self, data: PeerData, seed: int, window: int) -> None:
        super().__init__(data)
        train = events_split(data.log, data.split) == TRAIN
        self.counts = CoEngagement.from_logs(data.log, train, np.asarray(data.catalog.popularity), window)

    def raw(self, batch: Batch) -> np.ndarray:
        out = np.zeros((len(batch), len(self.data.catalog.items)))
        out[:, 1:] = self.counts.dense(batch.inputs.anchor_item, self.data.catalog.n_items)
        return out


class BM25Scorer(_PeerScorer):
    """Okapi BM25 of the query over each item's title and training tags (``rank_bm25``)."""

    def __init__(self, data: PeerData, seed: int, k1: float, b: float) -> None:
        super().__init__(data)
        from rank_bm25 import BM25Okapi

        documents = [words or ["<empty>"] for words in data.item_texts[1:]]
        self.index = BM25Okapi(documents, k1=k1, b=b)

    def raw(self, batch: Batch) -> np.ndarray:
        catalog = self.data.catalog
        out = np.zeros((len(batch), len(catalog.items)))
        for r, tokens in enumerate(batch.inputs.query_tokens.tolist()):
            words = [catalog.tokens.key(t) for t in tokens if t]
            if words:
                out[r, 1:] = self.index.get_scores(words)
        return out


PEER_CLASSES: Mapping[str, Callable[..., _PeerScorer]] = {
    "als": ALSScorer,
    "bpr": BPRScorer,
    "item_knn": ItemKNNScorer,
    "co_occurrence": CoOccurrenceScorer,
    "bm25": BM25Scorer,
}


def grid(name: str) -> Iterator[dict[str, Any]]:
    """Every hyperparameter combination of a peer's grid."""
    space = GRIDS[name]
    for values in itertools.product(*space.values()):
        yield dict(zip(space.keys(), values, strict=True))


def build_peer(name: str, data: PeerData, seed: int, **params: Any) -> Scorer:
    return PEER_CLASSES[name](data, seed, **params)
