"""The network's constructor arguments, without torch: training's config validates against them.

Like nanoGPT's ``GPTConfig``: the checkpoint stores these next to the weights, so the artifact alone
rebuilds the model (:func:`unirank.model.net.build_model_from_checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unirank.artifact.activity import DEFAULT_HALF_LIFE_DAYS, N_TIME_FEATURES

# lexical overlap, category match, log popularity, similarity to the anchor, similarity to the history,
# co-engagement with the anchor (log count, and share of the anchor's co-engagements), co-engagement
# with the history (mean over its items); with time features, the candidate's three time inputs after them;
# with item factors, the matrix-factorisation score (the candidate's factors . the history's mean) last
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
    time_features: bool = False
    """Score with each candidate's recent popularity and age at the request's time (the input
    ``candidate_time``, :mod:`unirank.artifact.activity`); False in checkpoints older than them."""
    recent_half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    """The recent-popularity half-life the time features were computed with."""
    mf_factors: int = 0
    """Width of the fixed item-factor table (a matrix factorisation of the training plays) whose
    score, the candidate's factors against the history's mean, is one more cross feature; 0: none
    (checkpoints older than it)."""

    @property
    def n_cross(self) -> int:
        """Cross features a head weighs: the eight base ones, the time features, the MF score."""
        return N_CROSS_FEATURES + (N_TIME_FEATURES if self.time_features else 0) + (self.mf_factors > 0)

    @property
    def mf_index(self) -> int:
        """Index of the MF score among the cross features (the last one; only with ``mf_factors``)."""
        return N_CROSS_FEATURES + (N_TIME_FEATURES if self.time_features else 0)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.n_experts < 1:
            raise ValueError("n_experts must be >= 1")
        if self.mf_factors < 0:
            raise ValueError("mf_factors must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
