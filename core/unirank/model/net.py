"""One shared representation, one head per task, scoring [B, N] candidates for any task mix.

The task id is a model input: every head runs on the shared representation and the row's own
task selects which head scores it, so a batch may mix tasks and each head only receives gradient
from its own task's rows. The shared representation is a shared-bottom MLP or a multi-gate
mixture of experts (MMoE: every task mixes the same experts with its own gate), by config.
Optional semantic imputation fills missing context inside the graph, so serving inputs stay the
same: a request without an anchor gets the user's latest played item, one without a query gets
the anchor's title words.

Training runs :class:`UniRankModel`; export and the torch backend run :class:`ServingModel`, the same
scores with everything that depends on an item alone precomputed into tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from unirank.artifact.tasks import HEAD_OFFSET

# lexical overlap, category match, log popularity, similarity to the anchor, similarity to the history,
# co-engagement with the anchor (log count, and share of the anchor's co-engagements), co-engagement
# with the history (mean over its items)
N_CROSS_FEATURES = 8
ARCHITECTURES: tuple[str, ...] = ("shared_bottom", "mmoe")


@dataclass
class ModelConfig:
    """Constructor arguments of :class:`UniRankModel`; stored next to the weights."""

    n_items: int
    """Item vocabulary size including the padding slot 0."""
    n_users: int
    n_tokens: int
    n_categories: int
    n_tasks: int = 4
    """Number of task heads (task ids 1..n_tasks)."""
    dim: int = 64
    """Width of item / context embeddings."""
    hidden: int = 128
    """Width of the shared representation."""
    dropout: float = 0.1
    use_task_type: bool = True
    """False builds the ablation: no task embedding and a single shared head (and MMoE gate)."""
    architecture: str = "shared_bottom"
    """``shared_bottom`` (one MLP for every task) or ``mmoe`` (experts mixed by a gate per task)."""
    n_experts: int = 4
    """MMoE experts (ignored by shared_bottom)."""
    impute_context: bool = False
    """Fill a missing anchor with the latest history item and a missing query with the anchor's title."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.n_experts < 1:
            raise ValueError("n_experts must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [..., L, d] over L where ``mask`` [..., L] is true; zeros if none."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)


class TaskHead(nn.Module):
    """Maps the shared representation to a query vector and weights for the cross features."""

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, dim)
        self.cross = nn.Linear(hidden, N_CROSS_FEATURES)

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

    def __init__(
        self,
        config: ModelConfig,
        title_tokens: np.ndarray,
        item_categories: np.ndarray,
        item_popularity: np.ndarray,
        item_neighbours: np.ndarray | None = None,
        item_neighbour_weights: np.ndarray | None = None,
        item_neighbour_shares: np.ndarray | None = None,
    ) -> None:
        """``item_neighbours`` [n_items, K] (0-padded): each item's most co-engaged items in
        training, with ``item_neighbour_weights`` (log counts scaled to [0, 1]) and
        ``item_neighbour_shares`` (count / the item's total); without them those features are 0."""
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
        self.heads = nn.ModuleList([TaskHead(config.hidden, d) for _ in range(n_heads)])
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

    def for_serving(self) -> ServingModel:
        """The same scores from precomputed tables (:class:`ServingModel`): what is exported and served.

        A snapshot: later changes to this model's weights do not reach it.
        """
        return ServingModel(self).eval()

    def forward(
        self,
        task: torch.Tensor,
        user: torch.Tensor,
        history: torch.Tensor,
        query_tokens: torch.Tensor,
        anchor_item: torch.Tensor,
        category: torch.Tensor,
        candidates: torch.Tensor,
        item_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, N]. ``item_table`` (from :meth:`item_table`) is an optional cache of item vectors.

        Training passes it so item content is encoded once per step instead of once per (row,
        candidate); the result is the same. Serving never passes it, so the exported graph has
        exactly the seven contract inputs.
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
    ) -> torch.Tensor:
        """Scores [B, n_items - 1] of every real item (column j is item j + 1).

        Equal to :meth:`forward` with every item as a candidate, but the item side is broadcast
        instead of gathered per row, which makes full-catalogue evaluation several times cheaper.
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
        return dot + (cross * cross_weights.unsqueeze(1)).sum(-1)


CATEGORY_COLUMNS_MAX = 64
"""Up to this many categories (padding aside) the serving graph matches them as one-hot columns of item rows;
with more (where those columns would outgrow the item vector) it compares a candidate's category ids."""


def _context_weight(weight: torch.Tensor, dim: int, widths: tuple[int, ...]) -> torch.Tensor:
    """A first-layer ``weight`` [out, 6 * dim] over the training context, for a context whose blocks
    are ``widths`` wide instead of ``dim``: each block's extra columns get weight 0."""
    blocks = weight.split(dim, dim=1)
    return torch.cat(
        [torch.cat([b, b.new_zeros(b.shape[0], w - dim)], 1) for b, w in zip(blocks, widths, strict=True)], 1
    )


class ServingModel(nn.Module):
    """The scores of :meth:`UniRankModel.forward` on the seven serving inputs, for inference only.

    Everything that depends on an item, a token, a task or a category alone is computed once, here,
    into lookup tables, so a call gathers rows instead of re-deriving them: the exported graph has a
    fraction of the training forward's nodes. Scores equal the training forward's up to float
    rounding (sums are taken in another order). Built by :meth:`UniRankModel.for_serving`.

    Item-side rows are ``E = d + 2 + C`` wide::

        [ item vector (d) | log popularity | 1 if a real item | one-hot of categories 1..C ]

    A candidate's row has its vector, popularity and categories; an anchor / history row its vector
    and the real-item 1, so one summed gather gives the history's vector sum and its length; a
    category's row its one-hot. The heads are fused into one linear layer and the row's task picks
    its block of outputs: the query vector and the popularity weight in the same layout, then the
    weights of the other features (:meth:`_fuse_heads`). A candidate's score is then one product of
    its row with ``query + w_anchor * anchor + w_history * history + w_category * category``: the
    head's dot product, both similarities, popularity and the category match at once. Lexical
    overlap reads a multi-hot query as in training; the three co-engagement rows over the catalogue
    become one scatter whose values already carry the head's weights.
    """

    item_columns: torch.Tensor
    item_rows: torch.Tensor
    anchor_rows: torch.Tensor | None
    category_columns: torch.Tensor | None
    item_categories: torch.Tensor | None
    token_rows: torch.Tensor
    title_rows: torch.Tensor
    title_tokens: torch.Tensor
    token_real: torch.Tensor
    token_zeros: torch.Tensor
    item_zeros: torch.Tensor
    user_rows: torch.Tensor
    category_rows: torch.Tensor
    task_rows: torch.Tensor
    head_select: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    neighbours: torch.Tensor
    anchor_neighbour_values: torch.Tensor
    history_neighbour_weights: torch.Tensor
    padding_score: torch.Tensor

    def __init__(self, model: UniRankModel, category_columns_max: int = CATEGORY_COLUMNS_MAX) -> None:
        super().__init__()
        cfg = self.config = model.config
        d = cfg.dim
        self.n_category_columns = cfg.n_categories - 1 if cfg.n_categories - 1 <= category_columns_max else 0
        width = self.width = d + 2 + self.n_category_columns
        self.n_heads = len(model.heads)
        device = model.item_emb.weight.device
        with torch.no_grad():
            self._item_tables(model, device)
            self._token_tables(model, device)
            self._neighbour_tables(model, device)
            self.register_buffer("user_rows", model.user_emb.weight.clone())
            self.register_buffer("category_rows", model.category_emb.weight.clone())
            tasks = torch.arange(cfg.n_tasks + 1, device=device)
            task_in = tasks if cfg.use_task_type else torch.zeros_like(tasks)
            self.register_buffer("task_rows", model.task_emb(task_in))
            head_index = (task_in - HEAD_OFFSET).clamp(min=0, max=self.n_heads - 1)
            select = nn.functional.one_hot(head_index, self.n_heads).to(torch.float32).unsqueeze(1)
            self.register_buffer("head_select", select)  # [tasks + 1, 1, heads]
            self.register_buffer("padding_score", torch.tensor(-1e9, device=device))
            # The context is [user | history row | query sum | anchor row | category | task].
            widths = (d, width, d + 1, width, d, d)
            self.shared = (
                _ServingBottom(model.shared, d, widths)
                if cfg.architecture != "mmoe"
                else _ServingMixture(model.shared, d, widths)
            )
            self._fuse_heads(model)

    def _item_tables(self, model: UniRankModel, device: torch.device) -> None:
        cfg, d, width = self.config, self.config.dim, self.width
        table = model.item_table()
        real = (torch.arange(cfg.n_items, device=device) > 0).to(table.dtype)
        rows = torch.zeros(cfg.n_items, width, device=device)
        rows[:, :d] = table * real[:, None]  # the history mean skips padding
        rows[:, d + 1] = real
        self.register_buffer("item_rows", rows)
        anchor_rows = None
        if bool(table[0].any()):  # anchor 0 reads the padding item's vector, zero unless trained otherwise
            anchor_rows = rows.clone()
            anchor_rows[0, :d] = table[0]
        self.register_buffer("anchor_rows", anchor_rows)
        columns = torch.zeros(cfg.n_items, width, device=device)
        columns[:, :d] = table
        columns[:, d] = model.item_log_pop
        if self.n_category_columns:
            hot = torch.zeros(cfg.n_items, cfg.n_categories, device=device).scatter_(
                1, model.item_categories, 1.0
            )
            columns[:, d + 2 :] = hot[:, 1:]
            category_columns = torch.zeros(cfg.n_categories, width, device=device)
            category_columns[1:, d + 2 :] = torch.eye(self.n_category_columns, device=device)
            self.register_buffer("category_columns", category_columns)
            self.register_buffer("item_categories", None)
        else:
            self.register_buffer("category_columns", None)
            # Padding becomes -1, which no request category equals (category 0 matches nothing).
            categories = model.item_categories.masked_fill(model.item_categories == 0, -1)
            self.register_buffer("item_categories", categories)
        self.register_buffer("item_columns", columns)

    def _token_tables(self, model: UniRankModel, device: torch.device) -> None:
        cfg = self.config
        real = model.real_token[0]
        rows = (
            torch.cat([model.token_emb.weight, torch.ones(cfg.n_tokens, 1, device=device)], 1) * real[:, None]
        )
        self.register_buffer("token_rows", rows)  # [tokens, d + 1]: embedding and 1, zero for padding
        self.register_buffer("title_rows", rows[model.title_tokens].sum(1))  # their sums over each title
        self.register_buffer("title_tokens", model.title_tokens.clone())
        self.register_buffer("token_real", real.clone())
        self.register_buffer("token_zeros", torch.zeros(1, cfg.n_tokens, device=device))

    def _neighbour_tables(self, model: UniRankModel, device: torch.device) -> None:
        real = (torch.arange(self.config.n_items, device=device) > 0).to(torch.float32)[:, None]
        self.register_buffer("neighbours", model.item_neighbours.clone())
        values = (
            torch.stack([model.item_neighbour_weights, model.item_neighbour_shares], 1) * real[:, :, None]
        )
        self.register_buffer("anchor_neighbour_values", values)  # [items, 2, K]
        self.register_buffer("history_neighbour_weights", model.item_neighbour_weights * real)
        self.register_buffer("item_zeros", torch.zeros(1, self.config.n_items, device=device))

    def _fuse_heads(self, model: UniRankModel) -> None:
        """One linear layer for every head; each head's block of ``width + 8`` outputs is
        [query vector, popularity weight, zeros (width) | 1, anchor, history, category weights |
        overlap, co-anchor, co-share, co-history weights]."""
        d, width = self.config.dim, self.width
        self.head_width = width + 8
        cross_at = {
            d: 2,
            width + 1: 3,
            width + 2: 4,
            width + 3: 1,
            width + 4: 0,
            width + 5: 5,
            width + 6: 6,
            width + 7: 7,
        }
        weights, biases = [], []
        for head in model.heads:
            assert isinstance(head, TaskHead)
            weight = head.query.weight.new_zeros(self.head_width, head.query.in_features)
            bias = head.query.bias.new_zeros(self.head_width)
            weight[:d], bias[:d] = head.query.weight, head.query.bias
            for out, feature in cross_at.items():
                weight[out], bias[out] = head.cross.weight[feature], head.cross.bias[feature]
            bias[width] = 1.0
            weights.append(weight)
            biases.append(bias)
        self.register_buffer("head_weight", torch.cat(weights))
        self.register_buffer("head_bias", torch.cat(biases))

    def forward(
        self,
        task: torch.Tensor,
        user: torch.Tensor,
        history: torch.Tensor,
        query_tokens: torch.Tensor,
        anchor_item: torch.Tensor,
        category: torch.Tensor,
        candidates: torch.Tensor,
    ) -> torch.Tensor:
        """Scores [B, N], as :meth:`UniRankModel.forward`."""
        d, width = self.config.dim, self.width
        history_sum = self.item_rows[history].sum(1)  # [B, width]
        history_count = history_sum[:, d + 1 : d + 2]
        history_row = history_sum / history_count.clamp(min=1.0)
        query_sum = self.token_rows[query_tokens].sum(1)  # [B, d + 1]: embeddings, count
        if self.config.impute_context:
            # No anchor: the latest history item (history is left-aligned, latest last).
            latest = history.gather(1, (history_count - 1.0).clamp(min=0.0).long()).squeeze(1)
            anchor_item = torch.where(anchor_item > 0, anchor_item, latest)
            # No query: the anchor's title words.
            no_query = query_sum[:, d:] == 0
            query_sum = query_sum + torch.where(no_query, self.title_rows[anchor_item], 0.0)
            title = torch.where(no_query, self.title_tokens[anchor_item], 0)
            query_tokens = torch.cat([query_tokens, title], 1)
        anchor_row = (self.item_rows if self.anchor_rows is None else self.anchor_rows)[anchor_item]
        context = torch.cat(
            [
                self.user_rows[user],
                history_row,
                query_sum / query_sum[:, d:].clamp(min=1.0),
                anchor_row,
                self.category_rows[category],
                self.task_rows[task],
            ],
            dim=1,
        )
        select = self.head_select[task]  # [B, 1, heads]
        heads = nn.functional.linear(self.shared(context, select), self.head_weight, self.head_bias)
        head = torch.matmul(select, heads.view(-1, self.n_heads, self.head_width))  # [B, 1, head_width]
        weight = head.flatten(1)  # [B, head_width], for the weights applied to [B, ...] features

        rows = [head[:, :, :width], anchor_row.unsqueeze(1), history_row.unsqueeze(1)]
        if self.category_columns is not None:
            rows.append(self.category_columns[category].unsqueeze(1))
        row = torch.matmul(head[:, :, width : width + len(rows)], torch.cat(rows, 1))  # [B, 1, width]
        scores = (self.item_columns[candidates] * row).sum(-1)
        if self.item_categories is not None:
            match = (self.item_categories[candidates] == category.view(-1, 1, 1)).any(-1)
            scores = scores + match.to(scores.dtype) * weight[:, width + 3 : width + 4]

        # Share of the distinct query tokens in each title: the multi-hot query, scaled by the
        # overlap weight over its size, read at the candidates' (distinct) title tokens.
        hot = (self.token_zeros * history_count).scatter(1, query_tokens, self.token_real[query_tokens])
        hot = hot * (weight[:, width + 4 : width + 5] / hot.sum(1, keepdim=True).clamp(min=1.0))
        cand_tokens = self.title_tokens[candidates]
        scores = scores + hot.gather(1, cand_tokens.flatten(1)).view_as(cand_tokens).sum(-1)

        # Co-engagement with the anchor (weight and share) and the history (mean weight), weighted.
        anchor_values = torch.matmul(
            head[:, :, width + 5 : width + 7], self.anchor_neighbour_values[anchor_item]
        )
        history_values = self.history_neighbour_weights[history].flatten(1) * (
            weight[:, width + 7 :] / history_count.clamp(min=1.0)
        )
        index = torch.cat([self.neighbours[anchor_item], self.neighbours[history].flatten(1)], 1)
        values = torch.cat([anchor_values.flatten(1), history_values], 1)
        co = (self.item_zeros * history_count).scatter_add(1, index, values)
        scores = scores + co.gather(1, candidates)
        return torch.where(candidates > 0, scores, self.padding_score)


def _bottom_layers(bottom: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The two linear layers of a :func:`_bottom`."""
    assert isinstance(bottom, nn.Sequential)
    first, second = bottom[0], bottom[3]
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    return first, second


class _ServingBottom(nn.Module):
    """The shared-bottom MLP on the serving context (dropout is off at inference)."""

    first_weight: torch.Tensor
    first_bias: torch.Tensor
    second_weight: torch.Tensor
    second_bias: torch.Tensor

    def __init__(self, bottom: nn.Module, dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        first, second = _bottom_layers(bottom)
        self.register_buffer("first_weight", _context_weight(first.weight, dim, widths))
        self.register_buffer("first_bias", first.bias.clone())
        self.register_buffer("second_weight", second.weight.clone())
        self.register_buffer("second_bias", second.bias.clone())

    def forward(self, context: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(nn.functional.linear(context, self.first_weight, self.first_bias))
        return torch.relu(nn.functional.linear(hidden, self.second_weight, self.second_bias))


class _ServingMixture(nn.Module):
    """:class:`MixtureOfExperts` with the experts' layers fused: one linear layer for every expert's
    first, one batched product for their second, the row's gate picked by ``select`` [B, 1, gates]."""

    first_weight: torch.Tensor
    first_bias: torch.Tensor
    second_weight: torch.Tensor
    second_bias: torch.Tensor
    gate_weight: torch.Tensor
    gate_bias: torch.Tensor

    def __init__(self, mixture: nn.Module, dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        assert isinstance(mixture, MixtureOfExperts)
        layers = [_bottom_layers(expert) for expert in mixture.experts]
        self.n_experts, self.n_gates = mixture.n_experts, mixture.n_gates
        self.hidden = layers[0][1].out_features
        first = torch.cat([_context_weight(a.weight, dim, widths) for a, _ in layers])
        self.register_buffer("first_weight", first)  # [experts * hidden, context]
        self.register_buffer("first_bias", torch.cat([a.bias for a, _ in layers]))
        self.register_buffer("second_weight", torch.stack([b.weight.t() for _, b in layers]))
        self.register_buffer("second_bias", torch.stack([b.bias for _, b in layers]).unsqueeze(1))
        self.register_buffer("gate_weight", _context_weight(mixture.gates.weight, dim, widths))
        self.register_buffer("gate_bias", mixture.gates.bias.clone())

    def forward(self, context: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        first = torch.relu(nn.functional.linear(context, self.first_weight, self.first_bias))
        first = first.view(-1, self.n_experts, self.hidden).transpose(0, 1)  # [E, B, hidden]
        experts = torch.relu(torch.matmul(first, self.second_weight) + self.second_bias)
        logits = nn.functional.linear(context, self.gate_weight, self.gate_bias)
        gate = torch.softmax(torch.matmul(select, logits.view(-1, self.n_gates, self.n_experts)), dim=-1)
        return (gate.permute(2, 0, 1) * experts).sum(0)  # gate [B, 1, E] -> [E, B, 1]


def model_checkpoint(model: UniRankModel) -> dict[str, Any]:
    """A self-describing, weights-only-loadable checkpoint: config + state dict."""
    return {"config": model.config.to_dict(), "state_dict": model.state_dict()}


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
    )
    model.load_state_dict(state)
    model.eval()
    return model
