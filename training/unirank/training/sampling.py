"""What a training step is made of: the batch share per task, the row's positive, the negatives
(popularity-mixed proposal, candidate pools, new releases, in-batch) with their log-q corrections,
and BatchMaker, which draws them for a whole batch in a fixed order."""

from __future__ import annotations

import math

import numpy as np
import torch

from unirank.artifact import TASKS, Catalog, TaskType
from unirank.artifact.catalog import new_release_years
from unirank.training.config import TrainConfig
from unirank.training.dataset import Dataset


def task_ratios(config: TrainConfig, tasks: np.ndarray) -> dict[int, float] | None:
    """Batch share per task id of the rows being trained (None: in proportion to the rows)."""
    present, counts = np.unique(tasks, return_counts=True)
    rows = dict(zip(present.tolist(), counts.tolist(), strict=True))
    if config.task_ratios is not None:
        by_id = {int(spec.task_type): config.task_ratios.get(spec.name, 0.0) for spec in TASKS}
        return {t: r for t, r in by_id.items() if t in rows}
    if config.task_sampling == "proportional":
        return None
    if config.task_sampling == "equal":
        return dict.fromkeys(rows, 1.0)
    return {t: math.sqrt(n) for t, n in rows.items()}


class NegativeSampler:
    """Negatives from a mix of uniform and popularity^0.75 proposals, with their log-probabilities.

    Subtracting log q from sampled logits (log-q correction) keeps the loss an unbiased stand-in
    for the full softmax, so popular negatives sharpen the model without teaching it that
    popular items are bad.
    """

    def __init__(self, popularity: np.ndarray, popular_share: float, generator: torch.Generator) -> None:
        pop = np.asarray(popularity, dtype=np.float64)[1:]
        n = len(pop)
        weighted = np.power(pop + 1.0, 0.75)
        proposal = (1.0 - popular_share) / n + popular_share * weighted / weighted.sum()
        self.proposal = torch.as_tensor(np.r_[0.0, proposal], dtype=torch.float32)
        self.log_q = torch.log(self.proposal.clamp(min=1e-30))
        self.log_q[0] = 0.0
        self.generator = generator

    def sample(self, positives: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k] item indices; accidental hits of the row's positive become padding (0)."""
        flat = torch.multinomial(
            self.proposal, positives.shape[0] * k, replacement=True, generator=self.generator
        )
        negatives = flat.view(-1, k)
        return torch.where(negatives == positives[:, None], torch.zeros_like(negatives), negatives)


def in_batch_candidates(positives: torch.Tensor) -> torch.Tensor:
    """[B, B]: every row's positive as a candidate of every row, with the row's own item as padding."""
    others = positives[None, :].expand(positives.shape[0], -1)
    return torch.where(others == positives[:, None], torch.zeros_like(others), others)


def _trim_padding(values: torch.Tensor) -> torch.Tensor:
    """Drop trailing all-padding columns of a left-aligned [B, L] id matrix (keeping at least one)."""
    used = torch.nonzero((values != 0).any(dim=0)).flatten()
    width = int(used[-1]) + 1 if len(used) else 1
    return values[:, :width]


def _as_tensors(dataset: Dataset, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(np.ascontiguousarray(value[rows]))
        for name, value in dataset.inputs.as_dict().items()
        if name != "candidates"
    }


class CandidatePoolNegatives:
    """Negatives from a row's own candidate pool: a title sharing a query word (search rows) or an
    item of the row's category (category rows); other rows get padding.

    Sampled negatives from the whole catalogue rarely share a query word or a category, so a model
    trained on them alone learns "match the words" and "be in the category" but not which of the
    matches to put first, which is what those rows are ranked on. Each pool is sampled uniformly,
    so its log-q correction is log(k / pool size).
    """

    def __init__(self, catalog: Catalog, seed: int) -> None:
        self.tokens = self._postings(catalog.title_token_matrix(), len(catalog.tokens))
        self.categories = self._postings(catalog.category_matrix(), len(catalog.categories))
        self.rng = np.random.default_rng(seed + 104729)
        years = np.asarray(catalog.release_year, dtype=np.int64)
        self.by_release = np.flatnonzero(years > 0)  # item indices with a known year, by year
        self.by_release = self.by_release[np.argsort(years[self.by_release], kind="stable")]
        self.release_sorted = years[self.by_release]
        self.newest_year = catalog.newest_release_year
        self.release_rng = np.random.default_rng(seed + 130363)

    def new_releases(self, time_ms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` items new at each time (uniformly: the pool new_releases rows are ranked in), with
        log-q ``log(k / pool size)``; 0 (padding) where nothing was new."""
        first, last = new_release_years(time_ms, self.newest_year)
        start = np.searchsorted(self.release_sorted, first, side="left")
        size = np.searchsorted(self.release_sorted, last, side="right") - start
        offsets = np.floor(self.release_rng.random((len(time_ms), k)) * size[:, None]).astype(np.int64)
        index = np.minimum(start[:, None] + offsets, max(len(self.by_release) - 1, 0))
        drawn = np.where(size[:, None] > 0, self.by_release[index] if len(self.by_release) else 0, 0)
        return drawn, np.log(k / np.maximum(size, 1)).astype(np.float32)

    @staticmethod
    def _postings(matrix: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
        keys = matrix[1:].ravel()
        items = np.repeat(np.arange(1, matrix.shape[0]), matrix.shape[1])
        keys, items = keys[keys > 0], items[keys > 0]
        order = np.lexsort((items, keys))
        keys, items = keys[order], items[order]
        return np.searchsorted(keys, np.arange(n_keys + 1), side="left"), items

    def _draw(
        self, postings: tuple[np.ndarray, np.ndarray], keys: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        indptr, items = postings
        start, size = indptr[keys], indptr[keys + 1] - indptr[keys]
        offsets = np.floor(self.rng.random((len(keys), k)) * size[:, None]).astype(np.int64)
        drawn = np.where(size[:, None] > 0, items[np.minimum(start[:, None] + offsets, len(items) - 1)], 0)
        return drawn, np.log(k / np.maximum(size, 1)).astype(np.float32)

    def sample(
        self, task: np.ndarray, query_tokens: np.ndarray, category: np.ndarray, positives: np.ndarray, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, k] item indices, [B, k] log-q) for the batch; 0 (padding) where a row has no pool."""
        out = np.zeros((len(task), k), dtype=np.int64)
        log_q = np.zeros((len(task), k), dtype=np.float32)
        n_query = (query_tokens > 0).sum(axis=1)
        search = np.flatnonzero((task == TaskType.SEARCH) & (n_query > 0))
        if len(search):
            pick = np.floor(self.rng.random(len(search)) * n_query[search]).astype(np.int64)
            drawn, q = self._draw(self.tokens, query_tokens[search, pick], k)
            out[search], log_q[search] = drawn, q[:, None]
        in_category = np.flatnonzero((task == TaskType.CATEGORY) & (category > 0))
        if len(in_category):
            drawn, q = self._draw(self.categories, category[in_category], k)
            out[in_category], log_q[in_category] = drawn, q[:, None]
        out[out == positives[:, None]] = 0  # an accidental hit is padding, not a negative
        return torch.from_numpy(out), torch.from_numpy(log_q)


class PositiveSampler:
    """Draws one of each row's positives per step (rows with several positives: uniformly)."""

    def __init__(self, dataset: Dataset, rows: np.ndarray, seed: int) -> None:
        self.start = dataset.positive_indptr[rows]
        self.length = dataset.positive_indptr[rows + 1] - self.start
        self.items = dataset.positive_items
        self.rng = np.random.default_rng(seed + 7919)

    def __call__(self, index: np.ndarray) -> torch.Tensor:
        offset = np.floor(self.rng.random(len(index)) * self.length[index]).astype(np.int64)
        return torch.from_numpy(self.items[self.start[index] + offset])


class BatchMaker:
    """Turns a sampler batch (row positions) into model inputs, candidates and log-q corrections.

    Everything random is drawn for the whole batch in a fixed order (positives, hidden users,
    sampled, pool and in-batch negatives), whichever rows this process scores: under DDP every
    process draws the same values as a single process would and keeps its own rows, so the shards
    of a step add up to exactly the single-process step.
    """

    def __init__(
        self,
        dataset: Dataset,
        catalog: Catalog,
        train_rows: np.ndarray,
        config: TrainConfig,
        generator: torch.Generator,
    ) -> None:
        self.config = config
        self.generator = generator
        self.tensors = _as_tensors(dataset, train_rows)
        self.positives_of = PositiveSampler(dataset, train_rows, config.seed)
        self.negatives = NegativeSampler(
            np.asarray(catalog.popularity), config.popular_negative_share, generator
        )
        self.pool_negatives = CandidatePoolNegatives(catalog, config.seed)
        self.time_ms = dataset.timestamp_ms[train_rows]
        self.activity = (
            dataset.events.history(config.recent_half_life_days)
            if config.time_features and dataset.events is not None
            else None
        )
        positive_share = np.bincount(
            dataset.positive_items[dataset.positive_indptr[train_rows]], minlength=len(catalog.items)
        ).astype(np.float64)
        self.positive_log_q = torch.as_tensor(
            np.log(np.maximum(positive_share / max(positive_share.sum(), 1.0), 1e-12) * config.batch_size),
            dtype=torch.float32,
        )

    def __call__(
        self, index: np.ndarray, part: np.ndarray | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(inputs, candidates [b, 1 + k...], corrections) for the rows ``part`` of the batch
        ``index`` (all of them when None)."""
        config = self.config
        positives = self.positives_of(index)
        hide = None
        if config.user_dropout > 0:
            hide = torch.rand(positives.shape[0], generator=self.generator) < config.user_dropout
        sampled = self.negatives.sample(positives, config.negatives)
        sampled_log_q = self.negatives.log_q[sampled]
        k = min(config.release_pool_negatives, config.negatives)
        if k:
            # new_releases rows are ranked among the items new at their time: most of their
            # negatives come from there, not from a catalogue where nearly everything is old.
            releases = np.flatnonzero(self.tensors["task"][index].numpy() == TaskType.NEW_RELEASES)
            if len(releases):
                drawn, log_q = self.pool_negatives.new_releases(self.time_ms[index[releases]], k)
                drawn[drawn == positives.numpy()[releases, None]] = 0  # a hit is padding
                rows_t = torch.from_numpy(releases)
                sampled[rows_t, :k] = torch.from_numpy(drawn)
                sampled_log_q[rows_t, :k] = torch.from_numpy(np.repeat(log_q[:, None], k, axis=1))
        blocks = [positives[:, None], sampled]
        corrections = [self.negatives.log_q[positives][:, None], sampled_log_q]
        if config.pool_negatives:
            pool, pool_log_q = self.pool_negatives.sample(
                self.tensors["task"][index].numpy(),
                self.tensors["query_tokens"][index].numpy(),
                self.tensors["category"][index].numpy(),
                positives.numpy(),
                config.pool_negatives,
            )
            blocks.append(pool)
            corrections.append(pool_log_q)
        if config.in_batch_negatives:
            others = in_batch_candidates(positives)
            blocks.append(others)
            corrections.append(self.positive_log_q[others])
        candidates, correction = torch.cat(blocks, dim=1), torch.cat(corrections, dim=1)
        rows = index if part is None else index[part]
        batch = {name: value[torch.from_numpy(rows)] for name, value in self.tensors.items()}
        for name in ("history", "query_tokens"):  # same scores, less padding to compare
            batch[name] = _trim_padding(batch[name])
        if part is not None:
            selected = torch.from_numpy(part)
            candidates, correction = candidates[selected], correction[selected]
            hide = None if hide is None else hide[selected]
        if hide is not None:
            batch["user"] = torch.where(hide, torch.zeros_like(batch["user"]), batch["user"])
        if self.config.time_features:
            if self.activity is None:
                raise ValueError("time_features needs a dataset with its events")
            times = self.activity.features(candidates.numpy(), self.time_ms[rows])
            batch["candidate_time"] = torch.from_numpy(times)
        return batch, candidates, correction
