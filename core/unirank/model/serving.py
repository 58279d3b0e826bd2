"""The serving form of :class:`~unirank.model.net.UniRankModel`: the same scores from precomputed
tables, what ``model.onnx`` is exported from and what the torch backend runs (:func:`serving_model`)."""

from __future__ import annotations

import torch
from torch import nn

from unirank.artifact.tasks import HEAD_OFFSET
from unirank.model.config import N_CROSS_FEATURES
from unirank.model.net import MixtureOfExperts, TaskHead, UniRankModel


def serving_model(model: UniRankModel) -> ServingModel:
    """The same scores from precomputed tables (:class:`ServingModel`): what is exported and served.

    A snapshot: later changes to ``model``'s weights do not reach it.
    """
    return ServingModel(model).eval()


INDEX_DTYPE = torch.int32
"""Item and token indices in the tables (neighbours, title tokens): half of int64, about 230 MB of
``model.onnx.data`` less at a million items; gathered rows are cast to int64 where they index."""

CO_ENGAGEMENT_ROW_MAX = 100_000
"""Up to this many items the serving graph sums co-engagement over a [B, items] row (a scatter,
then read at the candidates: cheapest for small catalogues); with more it sums it at the
candidates (:func:`co_engagement_at`), whose work and memory do not grow with the catalogue."""

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
    """The scores of :meth:`UniRankModel.forward` on the serving inputs (seven, eight with time
    features), for inference only.

    Everything that depends on an item, a token, a task or a category alone is computed once, here,
    into lookup tables, so a call gathers rows instead of re-deriving them: the exported graph has a
    fraction of the training forward's nodes. Scores equal the training forward's up to float
    rounding (sums are taken in another order). Built by :func:`serving_model`.

    Item-side rows are ``E = d + 2 + C (+ k)`` wide::

        [ item vector (d) | log popularity | 1 if a real item | one-hot of categories 1..C | factors (k) ]

    (the item factors of the MF score only with ``mf_factors``: the row's factor columns are the
    head's MF weight times the history's mean factors).

    A candidate's row has its vector, popularity and categories (``item_columns``, the one table of
    ``E`` floats per item); an anchor / history row, built from the same table's vectors, its
    vector and the real-item 1 (the history's: the mean vector and 1 when it has items); a
    category's row its one-hot. An anchor's title words are summed from ``token_rows`` per call.
    The heads are fused into one linear layer and the row's task picks its block of outputs: the
    query vector and the popularity weight in the same layout, then the weights of the other
    features (:meth:`_fuse_heads`). A candidate's score is then one product of its row with
    ``query + w_anchor * anchor + w_history * history + w_category * category``: the head's dot
    product, both similarities, popularity and the category match at once. Lexical overlap reads a
    multi-hot query as in training; the three co-engagement rows over the catalogue become one
    scatter whose values already carry the head's weights, or, beyond
    :data:`CO_ENGAGEMENT_ROW_MAX` items, one sum of those values at the candidates.
    """

    item_columns: torch.Tensor
    row_basis: torch.Tensor
    category_columns: torch.Tensor | None
    item_categories: torch.Tensor | None
    token_rows: torch.Tensor
    title_tokens: torch.Tensor
    token_real: torch.Tensor
    token_zeros: torch.Tensor
    item_zeros: torch.Tensor | None
    user_rows: torch.Tensor
    category_rows: torch.Tensor
    task_rows: torch.Tensor
    head_select: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    neighbours: torch.Tensor
    anchor_neighbour_values: torch.Tensor
    padding_score: torch.Tensor

    def __init__(
        self,
        model: UniRankModel,
        category_columns_max: int = CATEGORY_COLUMNS_MAX,
        co_engagement_row_max: int | None = None,
    ) -> None:
        """``co_engagement_row_max`` defaults to :data:`CO_ENGAGEMENT_ROW_MAX`."""
        super().__init__()
        cfg = self.config = model.config
        row_max = CO_ENGAGEMENT_ROW_MAX if co_engagement_row_max is None else co_engagement_row_max
        self.co_engagement_row = cfg.n_items <= row_max
        d = cfg.dim
        self.n_category_columns = cfg.n_categories - 1 if cfg.n_categories - 1 <= category_columns_max else 0
        self.mf_at = d + 2 + self.n_category_columns  # the item factors' first column (if any)
        width = self.width = self.mf_at + cfg.mf_factors
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
        basis = torch.zeros(d + 1, width, device=device)
        basis[torch.arange(d), torch.arange(d)] = 1.0
        basis[d, d + 1] = 1.0
        self.register_buffer("row_basis", basis)  # [vector | real] -> [vector | 0 | real | 0...]
        columns = torch.zeros(cfg.n_items, width, device=device)
        columns[:, :d] = table
        columns[:, d] = model.item_log_pop
        if self.n_category_columns:
            hot = torch.zeros(cfg.n_items, cfg.n_categories, device=device).scatter_(
                1, model.item_categories, 1.0
            )
            columns[:, d + 2 : self.mf_at] = hot[:, 1:]
            category_columns = torch.zeros(cfg.n_categories, width, device=device)
            category_columns[1:, d + 2 : self.mf_at] = torch.eye(self.n_category_columns, device=device)
            self.register_buffer("category_columns", category_columns)
            self.register_buffer("item_categories", None)
        else:
            self.register_buffer("category_columns", None)
            # Padding becomes -1, which no request category equals (category 0 matches nothing).
            categories = model.item_categories.masked_fill(model.item_categories == 0, -1)
            self.register_buffer("item_categories", categories)
        if model.item_factors is not None:
            columns[:, self.mf_at :] = model.item_factors
        self.register_buffer("item_columns", columns)

    def _token_tables(self, model: UniRankModel, device: torch.device) -> None:
        cfg = self.config
        real = model.real_token[0]
        rows = (
            torch.cat([model.token_emb.weight, torch.ones(cfg.n_tokens, 1, device=device)], 1) * real[:, None]
        )
        self.register_buffer("token_rows", rows)  # [tokens, d + 1]: embedding and 1, zero for padding
        self.register_buffer("title_tokens", model.title_tokens.to(INDEX_DTYPE))
        self.register_buffer("token_real", real.clone())
        self.register_buffer("token_zeros", torch.zeros(1, cfg.n_tokens, device=device))

    def _neighbour_tables(self, model: UniRankModel, device: torch.device) -> None:
        real = (torch.arange(self.config.n_items, device=device) > 0).to(torch.float32)[:, None]
        self.register_buffer("neighbours", model.item_neighbours.to(INDEX_DTYPE))
        values = (
            torch.stack([model.item_neighbour_weights, model.item_neighbour_shares], 1) * real[:, :, None]
        )
        # [items, 2, K]: an anchor reads both rows, a history item the weights (row 0) alone.
        self.register_buffer("anchor_neighbour_values", values)
        zeros = torch.zeros(1, self.config.n_items, device=device) if self.co_engagement_row else None
        self.register_buffer("item_zeros", zeros)  # the row co-engagement is scattered over

    def _item_row(self, vectors: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """An anchor / history row [B, width] from item vectors [B, d] and the real-item share
        [B, 1] (placed by a 0/1 matrix: exact, and one node), read from the candidates' table
        (``item_columns``) rather than a second table of items."""
        return torch.matmul(torch.cat([vectors, real], 1), self.row_basis)

    def _fuse_heads(self, model: UniRankModel) -> None:
        """One linear layer for every head; each head's block of ``width + 8 (+ 3)`` outputs is
        [query vector, popularity weight, zeros (width) | 1, anchor, history, category weights |
        overlap, co-anchor, co-share, co-history weights (| time feature weights)]."""
        d, width = self.config.dim, self.width
        self.n_mf = int(self.config.mf_factors > 0)
        self.n_time = self.config.n_cross - N_CROSS_FEATURES - self.n_mf
        self.head_width = width + self.config.n_cross
        cross_at = {
            d: 2,
            width + 1: 3,
            width + 2: 4,
            width + 3: 1,
            width + 4: 0,
            width + 5: 5,
            width + 6: 6,
            width + 7: 7,
            **{width + N_CROSS_FEATURES + j: N_CROSS_FEATURES + j for j in range(self.n_time + self.n_mf)},
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
        candidate_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, N], as :meth:`UniRankModel.forward` (``candidate_time`` [B, N, 3] with time
        features)."""
        d, width = self.config.dim, self.width
        real = (history > 0).to(torch.float32).unsqueeze(-1)  # [B, H, 1]: the history mean skips padding
        history_count = real.sum(1)
        per_item = history_count.clamp(min=1.0)
        history_columns = self.item_columns[history]  # [B, H, width]
        history_vectors = (history_columns[:, :, :d] * real).sum(1)
        history_row = self._item_row(history_vectors / per_item, history_count / per_item)
        query_sum = self.token_rows[query_tokens].sum(1)  # [B, d + 1]: embeddings, count
        if self.config.impute_context:
            # No anchor: the latest history item (history is left-aligned, latest last).
            latest = history.gather(1, (history_count - 1.0).clamp(min=0.0).long()).squeeze(1)
            anchor_item = torch.where(anchor_item > 0, anchor_item, latest)
            # No query: the anchor's title words.
            no_query = query_sum[:, d:] == 0
            title = self.title_tokens[anchor_item].long()
            query_sum = query_sum + torch.where(no_query, self.token_rows[title].sum(1), 0.0)
            query_tokens = torch.cat([query_tokens, torch.where(no_query, title, 0)], 1)
        # The anchor's row has its vector, also the padding item's (zero unless trained otherwise).
        anchor_row = self._item_row(
            self.item_columns[anchor_item][:, :d], (anchor_item > 0).to(torch.float32).unsqueeze(1)
        )
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
        if self.n_mf:
            # The MF score: the candidates' factor columns against the history's mean factors,
            # weighted, placed in the row's (otherwise zero) factor columns.
            mf_weight = weight[:, self.head_width - 1 :]  # [B, 1]
            mf_mean = (history_columns[:, :, self.mf_at :] * real).sum(1) / per_item
            row = torch.cat([row[:, :, : self.mf_at], (mf_weight * mf_mean).unsqueeze(1)], 2)
        scores = (self.item_columns[candidates] * row).sum(-1)
        if self.item_categories is not None:
            match = (self.item_categories[candidates] == category.view(-1, 1, 1)).any(-1)
            scores = scores + match.to(scores.dtype) * weight[:, width + 3 : width + 4]

        # Share of the distinct query tokens in each title: the multi-hot query, scaled by the
        # overlap weight over its size, read at the candidates' (distinct) title tokens.
        hot = (self.token_zeros * history_count).scatter(1, query_tokens, self.token_real[query_tokens])
        hot = hot * (weight[:, width + 4 : width + 5] / hot.sum(1, keepdim=True).clamp(min=1.0))
        cand_tokens = self.title_tokens[candidates].long()
        scores = scores + hot.gather(1, cand_tokens.flatten(1)).view_as(cand_tokens).sum(-1)

        # Co-engagement with the anchor (weight and share) and the history (mean weight), weighted.
        anchor_values = torch.matmul(
            head[:, :, width + 5 : width + 7], self.anchor_neighbour_values[anchor_item]
        )
        history_values = self.anchor_neighbour_values[history][:, :, 0].flatten(1) * (
            weight[:, width + 7 : width + 8] / history_count.clamp(min=1.0)
        )
        index = torch.cat([self.neighbours[anchor_item], self.neighbours[history].flatten(1)], 1).long()
        values = torch.cat([anchor_values.flatten(1), history_values], 1)
        if self.item_zeros is not None:
            co = (self.item_zeros * history_count).scatter_add(1, index, values).gather(1, candidates)
        else:
            co = co_engagement_at(index, values, candidates)
        scores = scores + co
        if self.n_time:
            if candidate_time is None:
                raise ValueError("a model with time features needs the candidates' time features")
            time_weights = weight[:, width + N_CROSS_FEATURES : width + N_CROSS_FEATURES + self.n_time]
            time_weights = time_weights.unsqueeze(1)  # [B, 1, 3]
            scores = scores + (candidate_time * time_weights).sum(-1)
        return torch.where(candidates > 0, scores, self.padding_score)


def co_engagement_at(index: torch.Tensor, values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[B, N]: per row, the sum of ``values`` [B, M] whose ``index`` [B, M] is each of ``candidates``
    [B, N], with no [B, items] row: the keys 2 * index and each candidate's 2c - 1 and 2c + 1 sorted
    together, the values summed along that order (float64: exact to far below float32's rounding);
    a candidate's sum is the running sum at 2c + 1 less that at 2c - 1. Work per row in M + 2N."""
    n = candidates.shape[1]
    keys = torch.cat([index * 2, candidates * 2 - 1, candidates * 2 + 1], 1)
    probes = torch.zeros(candidates.shape[0], 2 * n, dtype=torch.float64, device=values.device)
    summed = torch.cat([values.to(torch.float64), probes], 1)
    _, order = torch.topk(keys, keys.shape[1], dim=1, largest=False)
    running = summed.gather(1, order).cumsum(1)
    at_keys = torch.zeros_like(running).scatter(1, order, running)  # back in the keys' order
    below, through = at_keys[:, -2 * n : -n], at_keys[:, -n:]
    return (through - below).to(values.dtype)


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
