"""One shared representation, one head per task, scoring [B, N] candidates for any task mix.

The task id is a model input: every head runs on the shared representation and the row's own
task selects which head scores it, so a batch may mix tasks and each head only receives gradient
from its own task's rows. The shared representation is a shared-bottom MLP or a multi-gate
mixture of experts (MMoE: every task mixes the same experts with its own gate), by config.
Optional semantic imputation fills missing context inside the graph, so serving inputs stay the
same: a request without an anchor gets the user's latest played item, one without a query gets
the anchor's title words.

Training runs :class:`UniRankModel`; export and the torch backend run its serving form
(:mod:`unirank.model.serving`), the same scores from precomputed tables. The torch-free
constructor arguments are :mod:`unirank.model.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from unirank.artifact.tasks import HEAD_OFFSET
from unirank.model.config import N_CROSS_FEATURES, ModelConfig


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [..., L, d] over L where ``mask`` [..., L] is true; zeros if none."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)


class TaskHead(nn.Module):
    """Maps the shared representation to a query vector and weights for the cross features."""

    def __init__(self, hidden: int, dim: int, n_cross: int = N_CROSS_FEATURES) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, dim)
        self.cross = nn.Linear(hidden, n_cross)

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.query(shared), self.cross(shared)], dim=-1)


def _distinct_per_row(tokens: np.ndarray) -> np.ndarray:
    """Token rows with repeats replaced by padding (0), so a title word counts once."""
    out = np.array(tokens, dtype=np.int64, copy=True)
    for row in out:
        seen: set[int] = set()
        for j, token in enumerate(row.tolist()):
            if token in seen:
                row[j] = 0
            seen.add(token)
    return out


def _bottom(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )


class MixtureOfExperts(nn.Module):
    """MMoE (Ma et al., KDD 2018): ``n_experts`` bottoms, mixed per row by its task's softmax gate."""

    def __init__(self, in_features: int, hidden: int, dropout: float, n_experts: int, n_gates: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList([_bottom(in_features, hidden, dropout) for _ in range(n_experts)])
        self.gates = nn.Linear(in_features, n_gates * n_experts)
        self.n_gates, self.n_experts = n_gates, n_experts

    def forward(self, context: torch.Tensor, gate_index: torch.Tensor) -> torch.Tensor:
        experts = torch.stack([expert(context) for expert in self.experts], dim=1)  # [B, E, H]
        logits = self.gates(context).view(-1, self.n_gates, self.n_experts)  # [B, G, E]
        index = gate_index.view(-1, 1, 1).expand(-1, 1, self.n_experts)
        gate = torch.softmax(logits.gather(1, index).squeeze(1), dim=-1)  # [B, E]
        return (gate.unsqueeze(-1) * experts).sum(1)


class UniRankModel(nn.Module):
    # Buffers (item content); declared so type checkers know they are tensors.
    title_tokens: torch.Tensor
    item_categories: torch.Tensor
    item_log_pop: torch.Tensor
    item_neighbours: torch.Tensor
    item_neighbour_weights: torch.Tensor
    item_neighbour_shares: torch.Tensor
    real_token: torch.Tensor
    item_factors: torch.Tensor | None

    def __init__(
        self,
        config: ModelConfig,
        title_tokens: np.ndarray,
        item_categories: np.ndarray,
        item_popularity: np.ndarray,
        item_neighbours: np.ndarray | None = None,
        item_neighbour_weights: np.ndarray | None = None,
        item_neighbour_shares: np.ndarray | None = None,
        item_factors: np.ndarray | None = None,
    ) -> None:
        """``item_neighbours`` [n_items, K] (0-padded): each item's most co-engaged items in
        training, with ``item_neighbour_weights`` (log counts scaled to [0, 1]) and
        ``item_neighbour_shares`` (count / the item's total); without them those features are 0.
        ``item_factors`` [n_items, mf_factors]: the fixed table of the MF score (zeros without it)."""
        super().__init__()
        self.config = config
        d = config.dim
        self.item_emb = nn.Embedding(config.n_items, d, padding_idx=0)
        self.user_emb = nn.Embedding(config.n_users, d, padding_idx=0)
        self.token_emb = nn.Embedding(config.n_tokens, d, padding_idx=0)
        self.category_emb = nn.Embedding(config.n_categories, d, padding_idx=0)
        self.task_emb = nn.Embedding(config.n_tasks + 1, d)
        for emb in (self.item_emb, self.user_emb, self.token_emb, self.category_emb):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()
        n_heads = config.n_tasks if config.use_task_type else 1
        self.shared: nn.Module
        if config.architecture == "mmoe":
            self.shared = MixtureOfExperts(6 * d, config.hidden, config.dropout, config.n_experts, n_heads)
        else:
            self.shared = _bottom(6 * d, config.hidden, config.dropout)
        self.heads = nn.ModuleList([TaskHead(config.hidden, d, config.n_cross) for _ in range(n_heads)])
        # Item content lives in the graph so the serving inputs stay ids only.
        self.register_buffer(
            "title_tokens", torch.as_tensor(_distinct_per_row(title_tokens), dtype=torch.long)
        )
        real_token = torch.ones(1, config.n_tokens)
        real_token[0, 0] = 0.0
        self.register_buffer("real_token", real_token, persistent=False)
        self.register_buffer("item_categories", torch.as_tensor(item_categories, dtype=torch.long))
        log_pop = np.log1p(np.asarray(item_popularity, dtype=np.float32))
        log_pop = log_pop / max(float(log_pop.max()), 1.0)
        self.register_buffer("item_log_pop", torch.as_tensor(log_pop, dtype=torch.float32))
        if item_neighbours is None:
            item_neighbours = np.zeros((config.n_items, 1), dtype=np.int64)
        empty = np.zeros(item_neighbours.shape, dtype=np.float32)
        self.register_buffer("item_neighbours", torch.as_tensor(item_neighbours, dtype=torch.long))
        for name, values in (
            ("item_neighbour_weights", item_neighbour_weights),
            ("item_neighbour_shares", item_neighbour_shares),
        ):
            self.register_buffer(
                name, torch.as_tensor(empty if values is None else values, dtype=torch.float32)
            )
        factors = None
        if config.mf_factors:
            shape = (config.n_items, config.mf_factors)
            factors = torch.as_tensor(np.zeros(shape) if item_factors is None else item_factors)
            if tuple(factors.shape) != shape:
                raise ValueError(f"item_factors must be {list(shape)}, not {list(factors.shape)}")
            factors = factors.to(torch.float32)
        self.register_buffer("item_factors", factors)  # None: no buffer, as in older checkpoints

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        """Content-aware item vectors [..., d] for item indices [...]."""
        tokens = self.title_tokens[items]
        cats = self.item_categories[items]
        return (
            self.item_emb(items)
            + _masked_mean(self.token_emb(tokens), tokens > 0)
            + _masked_mean(self.category_emb(cats), cats > 0)
        )

    def item_table(self) -> torch.Tensor:
        """:meth:`item_repr` of every item index, [n_items, d] (row 0 is the padding item)."""
        return self.item_repr(torch.arange(self.config.n_items, device=self.item_emb.weight.device))

    def forward(
        self,
        task: torch.Tensor,
        user: torch.Tensor,
        history: torch.Tensor,
        query_tokens: torch.Tensor,
        anchor_item: torch.Tensor,
        category: torch.Tensor,
        candidates: torch.Tensor,
        candidate_time: torch.Tensor | None = None,
        item_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, N]. ``item_table`` (from :meth:`item_table`) is an optional cache of item vectors.

        Training passes it so item content is encoded once per step instead of once per (row,
        candidate); the result is the same. Serving never passes it, so the exported graph has
        exactly the contract inputs. ``candidate_time`` [B, N, 3]: the candidates' time features
        at the row's time, required by a model with ``time_features``.
        """

        def items(index: torch.Tensor) -> torch.Tensor:
            return self.item_repr(index) if item_table is None else item_table[index]

        anchor_item, query_tokens = self._impute(history, query_tokens, anchor_item)
        context = self._context(task, user, history, query_tokens, anchor_item, category, items)
        scores = self._score(
            context,
            query_tokens,
            category,
            anchor_item,
            history,
            candidates,
            cand_vecs=items(candidates),
            cand_tokens=self.title_tokens[candidates],
            cand_cats=self.item_categories[candidates],
            cand_pop=self.item_log_pop[candidates],
            cand_time=candidate_time,
        )
        return torch.where(candidates > 0, scores, torch.full_like(scores, -1e9))

    def score_all_items(
        self,
        task: torch.Tensor,
        user: torch.Tensor,
        history: torch.Tensor,
        query_tokens: torch.Tensor,
        anchor_item: torch.Tensor,
        category: torch.Tensor,
        item_table: torch.Tensor | None = None,
        item_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, n_items - 1] of every real item (column j is item j + 1).

        Equal to :meth:`forward` with every item as a candidate, but the item side is broadcast
        instead of gathered per row, which makes full-catalogue evaluation several times cheaper.
        ``item_time`` [B, n_items - 1, 3]: every real item's time features at the row's time.
        """
        table = self.item_table() if item_table is None else item_table
        anchor_item, query_tokens = self._impute(history, query_tokens, anchor_item)
        context = self._context(task, user, history, query_tokens, anchor_item, category, table.__getitem__)
        return self._score(
            context,
            query_tokens,
            category,
            anchor_item,
            history,
            None,
            cand_vecs=table[1:].unsqueeze(0),
            cand_tokens=self.title_tokens[1:].unsqueeze(0),
            cand_cats=self.item_categories[1:].unsqueeze(0),
            cand_pop=self.item_log_pop[1:].unsqueeze(0),
            cand_time=item_time,
        )

    def _co_engagement(self, items: torch.Tensor, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, n_items]: for item lists [B, M] (0 = none), the sum of their neighbours' values."""
        batch = items.shape[0]
        neighbours = self.item_neighbours[items].reshape(batch, -1)  # [B, M * K]
        weights = (values[items] * (items > 0).to(dtype).unsqueeze(-1)).reshape(batch, -1)
        rows = torch.zeros(batch, self.config.n_items, dtype=dtype, device=items.device)
        return rows.scatter_add(1, neighbours, weights)

    def _impute(
        self, history: torch.Tensor, query_tokens: torch.Tensor, anchor_item: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchor, query tokens) with missing ones filled when ``impute_context`` is on."""
        if not self.config.impute_context:
            return anchor_item, query_tokens
        # History is left-aligned with the most recent last: its last non-padding slot.
        n_history = (history > 0).sum(-1, keepdim=True)
        latest = history.gather(1, (n_history - 1).clamp(min=0)).squeeze(1)
        anchor_item = torch.where(anchor_item > 0, anchor_item, latest)
        no_query = ~(query_tokens > 0).any(-1, keepdim=True)
        title = self.title_tokens[anchor_item] * no_query.to(query_tokens.dtype)
        return anchor_item, torch.cat([query_tokens, title], dim=1)

    def _context(
        self,
        task: torch.Tensor,
        user: torch.Tensor,
        history: torch.Tensor,
        query_tokens: torch.Tensor,
        anchor_item: torch.Tensor,
        category: torch.Tensor,
        items: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query vector [B, d], cross-feature weights [B, F], anchor vector, history vector) per row."""
        cfg = self.config
        task_in = task if cfg.use_task_type else torch.zeros_like(task)
        # History items are content-aware too, so a rarely played item still says what it is about.
        history_vec = _masked_mean(items(history), history > 0)
        anchor_vec = items(anchor_item)
        context = torch.cat(
            [
                self.user_emb(user),
                history_vec,
                _masked_mean(self.token_emb(query_tokens), query_tokens > 0),
                anchor_vec,
                self.category_emb(category),
                self.task_emb(task_in),
            ],
            dim=-1,
        )
        head_index = (task_in - HEAD_OFFSET).clamp(min=0, max=len(self.heads) - 1)
        shared = self.shared(context, head_index) if cfg.architecture == "mmoe" else self.shared(context)
        # Every head runs; the row's task picks one. [B, heads, d + F] -> [B, d + F]
        head_out = torch.stack([head(shared) for head in self.heads], dim=1)
        gather_index = head_index.view(-1, 1, 1).expand(-1, 1, head_out.shape[-1])
        selected = head_out.gather(1, gather_index).squeeze(1)
        return selected[:, : cfg.dim], selected[:, cfg.dim :], anchor_vec, history_vec

    def _mf_score(self, history: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        """[B, N]: each candidate's item factors . the mean factors of the row's history items."""
        assert self.item_factors is not None
        real = (history > 0).to(self.item_factors.dtype).unsqueeze(-1)
        mean = (self.item_factors[history] * real).sum(1) / real.sum(1).clamp(min=1.0)  # [B, k]
        if candidates is None:
            return mean @ self.item_factors[1:].T
        return (self.item_factors[candidates] * mean.unsqueeze(1)).sum(-1)

    def _score(
        self,
        context: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        query_tokens: torch.Tensor,
        category: torch.Tensor,
        anchor_item: torch.Tensor,
        history: torch.Tensor,
        candidates: torch.Tensor | None,
        cand_vecs: torch.Tensor,
        cand_tokens: torch.Tensor,
        cand_cats: torch.Tensor,
        cand_pop: torch.Tensor,
        cand_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, N]; the candidate tensors are [B, N, ...] or [1, N, ...] (shared by every row).

        ``candidates`` are the [B, N] item indices, or None for every real item (1..n_items - 1).
        """
        query_vec, cross_weights, anchor_vec, history_vec = context
        # The head's query vector, plus direct similarity to the anchor and to the history (an
        # MLP alone learns "close to this item" poorly), all in one batched matmul.
        row_vecs = torch.stack([query_vec, anchor_vec, history_vec], dim=-1)  # [B, d, 3]
        sims = torch.matmul(cand_vecs, row_vecs)  # [B, N, 3]
        dot, anchor_sim, history_sim = sims[..., 0], sims[..., 1], sims[..., 2]

        # Share of the distinct query tokens found in the title: a multi-hot query looked up at the
        # title's (distinct) tokens, linear in title length rather than title x query length.
        batch = query_tokens.shape[0]
        hot = torch.zeros(batch, self.config.n_tokens, dtype=dot.dtype, device=dot.device).scatter(
            1, query_tokens, torch.ones(query_tokens.shape, dtype=dot.dtype, device=dot.device)
        )
        hot = hot * self.real_token  # the padding token 0 is never a match
        n_query = hot.sum(-1, keepdim=True).clamp(min=1.0)
        n_cand, width = cand_tokens.shape[1], cand_tokens.shape[2]
        if candidates is None:  # one candidate list (every item) shared by every row
            found = hot[:, cand_tokens.reshape(-1)]
        else:
            found = hot.gather(1, cand_tokens.reshape(batch, -1))
        overlap = found.view(batch, n_cand, width).sum(-1) / n_query
        cat = category.view(-1, 1, 1)
        cat_match = ((cand_cats == cat) & (cat > 0)).any(-1).to(dot.dtype)
        pop = cand_pop.expand_as(dot)

        # How strongly each item was co-engaged with the anchor (and with the history) in training:
        # the neighbour lists scattered into rows over the catalogue, then read at the candidates.
        def at_candidates(row: torch.Tensor) -> torch.Tensor:
            return row[:, 1:] if candidates is None else row.gather(1, candidates)

        anchor = anchor_item.unsqueeze(1)
        co_anchor = at_candidates(self._co_engagement(anchor, self.item_neighbour_weights, dot.dtype))
        co_share = at_candidates(self._co_engagement(anchor, self.item_neighbour_shares, dot.dtype))
        n_history = (history > 0).sum(-1, keepdim=True).clamp(min=1).to(dot.dtype)
        co_history = (
            at_candidates(self._co_engagement(history, self.item_neighbour_weights, dot.dtype)) / n_history
        )
        cross = torch.stack(
            [overlap, cat_match, pop, anchor_sim, history_sim, co_anchor, co_share, co_history], dim=-1
        )
        if self.config.time_features:
            if cand_time is None:
                raise ValueError("a model with time features needs the candidates' time features")
            cross = torch.cat([cross, cand_time.to(dot.dtype).expand(*dot.shape, -1)], dim=-1)
        if self.item_factors is not None:
            cross = torch.cat([cross, self._mf_score(history, candidates).unsqueeze(-1)], dim=-1)
        return dot + (cross * cross_weights.unsqueeze(1)).sum(-1)


CHECKPOINT_INDICES = ("item_neighbours", "title_tokens", "item_categories")
"""Index buffers a checkpoint stores as int32 (half the bytes of ``model.pt``'s largest tables at a
million items); :func:`build_model_from_checkpoint` reads them back as the model's int64."""


def model_checkpoint(model: UniRankModel) -> dict[str, Any]:
    """A self-describing, weights-only-loadable checkpoint: config + state dict."""
    state = model.state_dict()
    for name in CHECKPOINT_INDICES:
        if int(state[name].abs().max()) <= torch.iinfo(torch.int32).max:
            state[name] = state[name].to(torch.int32)
    return {"config": model.config.to_dict(), "state_dict": state}


def build_model_from_checkpoint(checkpoint: dict[str, Any]) -> UniRankModel:
    """Rebuild the model from :func:`model_checkpoint` output (buffers come from the state dict)."""
    config = ModelConfig(**checkpoint["config"])
    state = checkpoint["state_dict"]
    model = UniRankModel(
        config,
        title_tokens=state["title_tokens"].numpy(),
        item_categories=state["item_categories"].numpy(),
        item_popularity=np.zeros(config.n_items, dtype=np.float32),
        item_neighbours=state["item_neighbours"].numpy(),
        item_neighbour_weights=state["item_neighbour_weights"].numpy(),
        item_neighbour_shares=state["item_neighbour_shares"].numpy(),
        item_factors=state["item_factors"].numpy() if config.mf_factors else None,
    )
    model.load_state_dict(state)
    model.eval()
    return model
