"""Training configuration: one dataclass, with presets sized for tests, quick runs and the demo."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from unirank.artifact import TASKS
from unirank.model.config import ARCHITECTURES

TASK_WEIGHTINGS: tuple[str, ...] = ("static", "uncertainty")
WARM_START_LR_SCALE = 0.1
"""Default learning rate of a warm-start refit, as a share of the parent's."""
WARM_START_MAX_STEPS = 200
"""Default step bound of a warm-start refit (``--max-steps``)."""


TASK_SAMPLINGS = ("sqrt", "equal", "proportional")
RETIRED_TASKS = ("distil", "drop")
ITEM_INITS = ("random", "als", "als_users", "als_frozen")


def _equal_per_task() -> dict[str, float]:
    return {spec.name: 1.0 for spec in TASKS}


@dataclass
class TrainConfig:
    """Everything one training run needs; stored in the artifact manifest.

    Precedence is simple: a preset (:meth:`tiny`, :meth:`small`, :meth:`default`) gives the
    defaults and keyword overrides (the CLI's flags) replace single fields.
    """

    data: str = "synthetic"
    """Data spec: ``synthetic``, ``movielens:PATH`` or ``logs:PATH``."""
    size: str = "default"
    """Synthetic preset: ``tiny``, ``small`` or ``default``."""
    synthetic_items: int | None = None
    """Synthetic catalogue size in place of the preset's (``--items``; users and events stay the
    preset's, so a larger catalogue has a longer tail); None: the preset's."""
    seed: int = 0
    """Seeds the data generator, parameter init, sampling and evaluation subsets."""

    max_history: int = 20
    """History length the encoder keeps (most recent last); the server uses the same."""
    max_query_tokens: int = 8

    dim: int = 32
    hidden: int = 96
    dropout: float = 0.1
    architecture: str = "shared_bottom"
    """``shared_bottom`` or ``mmoe`` (see :class:`unirank.model.config.ModelConfig`)."""
    n_experts: int = 4
    use_task_type: bool = True
    """False trains the ablation without the task-type input (one head for every task)."""
    impute_context: bool = True
    """Semantic imputation of missing context inside the model (anchor from history, query from anchor)."""
    co_engagement_window: int = 10
    """Plays within this many of each other (same user, training split) count as co-engaged."""
    co_engagement_neighbours: int = 50
    """Most co-engaged items per item kept for the model's co-engagement feature (0: no feature)."""

    epochs: int = 15
    """Upper bound; early stopping on the validation metric usually ends sooner."""
    patience: int = 2
    """Epochs without validation improvement before stopping (the best epoch's weights are kept)."""
    task_patience: int = 2
    """Epochs without improvement of one task's own validation NDCG before that task stops
    training (its rows leave the batches, its head gets no gradient) while the others go on;
    0 never retires a task. The last task still training is never retired."""
    retired_tasks: str = "distil"
    """What a retired task's rows do while the others train on: ``distil`` (they stay in the
    batches and learn the scores of the task's best-validation snapshot, so the task does not
    drift as the shared layers change) or ``drop`` (they leave the batches, their share goes to
    the others). Distributed training always drops."""
    item_init: str = "random"
    """How the item embeddings start: ``random`` (normal, std 0.05), ``als`` (from ALS item factors
    of the training split's plays, rescaled to that spread: ``unirank.training.item_init``) or
    ``als_users`` (the users' embeddings from its user factors too) or ``als_frozen`` (the item table
    is ALS's and is not trained). Needs ``implicit``."""
    mf_factors: int = 16
    """Width of the MF score's item table (``unirank.training.item_init.mf_item_factors``: ALS on
    the training plays, whitened), a cross feature every head weighs and calibration may raise;
    0: no MF score (the model before it). Adds ``4 * mf_factors`` bytes per item to the served
    tables. Needs ``implicit``. 16: validation picked it on MovieLens-small and the sparse shape
    (docs/training.md)."""
    calibrate_heads: bool = True
    """After training, raise a task head's weight on popularity and co-engagement where that
    raises the task's validation NDCG (``unirank.training.calibration.calibrate_heads``)."""
    steps_per_epoch: int | None = 100
    """Steps between validations (an "epoch" here); None: one pass over the training rows.

    A fixed number keeps early stopping as fine-grained on a large data set as on a small one, and
    gives every model of a comparison the same budget whatever its share of the rows."""
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    negatives: int = 64
    """Sampled negatives per row; every row scores 1 + negatives candidates."""
    popular_negative_share: float = 0.5
    """Share of the proposal drawn by popularity (rest uniform); corrected by log-q in the loss."""
    pool_negatives: int = 0
    """Extra negatives per search / category row from its own candidate pool (titles sharing a query
    word, items of the category): the items those rows are ranked against."""
    release_pool_negatives: int = 48
    """Of each new_releases row's ``negatives``, how many are drawn from the items new at the
    row's time (the set it is ranked in) instead of the whole catalogue; 0: none."""
    time_features: bool = True
    """Score with each candidate's recent popularity (an exponentially decayed count of its events
    before the row's time) and its age (since its first event, and since its release year where
    known) at the row's time: :mod:`unirank.artifact.activity`; False: the model without them."""
    recent_half_life_days: float = 30.0
    """Half-life of the recent-popularity count (stored in the artifact; serving decays with it)."""
    in_batch_negatives: bool = False
    """Also score every other row's positive in the batch as a negative (log-q corrected)."""
    user_dropout: float = 0.1
    """Chance of hiding the user id from a training row, so anonymous requests still rank well."""
    task_weights: dict[str, float] = field(default_factory=_equal_per_task)
    """w_t in the loss sum_t w_t * L_t, by task name; a task of weight 0 is not trained or selected on."""
    task_weighting: str = "static"
    """``static`` (the w_t above) or ``uncertainty``: w_t * (exp(-s_t) L_t + s_t / 2) with learned s_t
    (Kendall, Gal and Cipolla, CVPR 2018), so noisier tasks are down-weighted automatically."""
    task_ratios: dict[str, float] | None = None
    """Share of each task in a batch (normalised), by task name; None: ``task_sampling`` decides."""
    task_sampling: str = "sqrt"
    """Batch shares where ``task_ratios`` is None: ``sqrt`` (in proportion to the square root of
    each task's training rows: big tasks get more steps, small ones are not drowned, and none is
    revisited so often that it overfits while the others still learn), ``equal`` or
    ``proportional`` (to the rows)."""

    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """Train / validation / test shares of each user's events, cut by time per user."""
    validation_rows_per_task: int = 600
    """Validation rows per task ranked after each epoch for early stopping."""
    eval_rows_per_task: int = 3000
    """Test rows per task in the final evaluation (a seeded subset when there are more)."""
    min_train_rows: int = 100
    """A use-case with fewer training rows is skipped (not trained, evaluated or served), with
    the reason reported before training (``unirank.training.coverage``)."""
    min_eval_rows: int = 30
    """A use-case with fewer validation or test rows is skipped: too few to select or measure on."""
    threads: int | None = 1
    """torch intra-op threads while training and evaluating; None leaves torch's default.

    One thread keeps runs bit-for-bit reproducible and is the fastest choice on a busy machine
    (a multi-threaded op waits for its slowest thread); raise it on a dedicated one."""
    log_every: int = 0
    """Print progress every N steps as well as after each epoch; 0 for per epoch only."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in all, validating once more where it stops (a partial
    epoch); None: ``epochs`` and early stopping decide. A warm-start refit is bounded by it."""
    device: str = "cpu"
    """Where the training steps run: ``cpu`` or ``cuda`` (each torchrun process then takes
    ``cuda:LOCAL_RANK``); evaluation and export always run on the CPU."""

    def __post_init__(self) -> None:
        names = {spec.name for spec in TASKS}
        for label, table in (("task_weights", self.task_weights), ("task_ratios", self.task_ratios or {})):
            unknown = sorted(set(table) - names)
            if unknown:
                raise ValueError(f"{label}: unknown tasks {unknown}; known: {sorted(names)}")
            if any(v < 0 for v in table.values()):
                raise ValueError(f"{label} must be >= 0")
        if not any(self.task_weight(name) > 0 for name in names):
            raise ValueError(f"task_weights {self.task_weights} trains no task: give one a weight > 0")
        positive = ("epochs", "batch_size", "negatives", "dim", "hidden", "max_history", "n_experts")
        low = [name for name in positive if getattr(self, name) < 1]
        if low:
            raise ValueError(f"{', '.join(low)} must be >= 1")
        if self.recent_half_life_days <= 0:
            raise ValueError("recent_half_life_days must be > 0")
        if self.learning_rate <= 0 or self.weight_decay < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("learning_rate must be > 0, weight_decay >= 0 and dropout in [0, 1)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 (or None)")
        if self.patience < 1 or self.task_patience < 0:
            raise ValueError("patience must be >= 1 and task_patience >= 0")
        if self.min_train_rows < 1 or self.min_eval_rows < 1:
            raise ValueError("min_train_rows and min_eval_rows must be >= 1")
        if self.validation_rows_per_task < 1 or self.eval_rows_per_task < 1:
            raise ValueError("validation_rows_per_task and eval_rows_per_task must be >= 1")
        fractions = tuple(self.split_fractions)
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three shares > 0 adding up to 1, not {fractions}")
        if not 0.0 <= self.popular_negative_share <= 1.0 or not 0.0 <= self.user_dropout < 1.0:
            raise ValueError("popular_negative_share must be in [0, 1] and user_dropout in [0, 1)")
        if self.task_sampling not in TASK_SAMPLINGS:
            raise ValueError(f"task_sampling must be one of {TASK_SAMPLINGS}, not {self.task_sampling!r}")
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {TASK_WEIGHTINGS}, not {self.task_weighting!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 (or None)")
        if self.synthetic_items is not None and self.synthetic_items < 10:
            raise ValueError("synthetic_items must be >= 10 (or None)")
        if self.device.split(":", 1)[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', not {self.device!r}")
        if self.retired_tasks not in RETIRED_TASKS:
            raise ValueError(f"retired_tasks must be one of {RETIRED_TASKS}, not {self.retired_tasks!r}")
        if self.mf_factors < 0:
            raise ValueError("mf_factors must be >= 0 (0: no MF score)")
        if self.item_init not in ITEM_INITS:
            raise ValueError(f"item_init must be one of {ITEM_INITS}, not {self.item_init!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        self.split_fractions = tuple(float(f) for f in self.split_fractions)  # type: ignore[assignment]

    def task_weight(self, name: str) -> float:
        return float(self.task_weights.get(name, 1.0))

    def only(self, task: str) -> TrainConfig:
        """The same run trained and selected on one task alone (a single-task model)."""
        names = [spec.name for spec in TASKS]
        if task not in names:
            raise ValueError(f"unknown task {task!r}; known: {names}")
        weights = {name: float(name == task) for name in names}
        return self.replace(task_weights=weights, task_ratios=dict(weights))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> TrainConfig:
        """A small but working artifact in a few seconds (tests, CI)."""
        base = cls(
            size="tiny",
            seed=seed,
            dim=32,
            hidden=64,
            epochs=8,
            patience=3,
            batch_size=256,
            learning_rate=1e-2,
            negatives=48,
            steps_per_epoch=None,
            validation_rows_per_task=200,
            eval_rows_per_task=500,
        )
        return base.replace(**overrides)

    @classmethod
    def small(cls, seed: int = 0, **overrides: Any) -> TrainConfig:
        return cls(size="small", seed=seed).replace(**overrides)

    @classmethod
    def default(cls, seed: int = 0, **overrides: Any) -> TrainConfig:
        return cls(seed=seed).replace(**overrides)

    @classmethod
    def sparse(cls, seed: int = 0, **overrides: Any) -> TrainConfig:
        """The default run on the ``sparse`` synthetic shape (a listening history)."""
        return cls(size="sparse", seed=seed).replace(**overrides)

    @classmethod
    def preset(cls, size: str, seed: int = 0, **overrides: Any) -> TrainConfig:
        presets = {"tiny": cls.tiny, "small": cls.small, "default": cls.default, "sparse": cls.sparse}
        try:
            return presets[size](seed, **overrides)
        except KeyError:
            raise ValueError(f"unknown size {size!r}; known: {sorted(presets)}") from None
