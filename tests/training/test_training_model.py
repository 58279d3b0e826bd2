"""Model options: MMoE, semantic imputation, the co-engagement feature; each exports to ONNX intact,
in the serving form whose precomputed tables give the training forward's scores from a small graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from unirank.artifact.features import INPUT_NAMES, OUTPUT_NAME
from unirank.model import serving as serving_module
from unirank.model.config import ModelConfig
from unirank.model.net import UniRankModel, build_model_from_checkpoint, model_checkpoint
from unirank.model.serving import CATEGORY_COLUMNS_MAX, ServingModel, co_engagement_at, serving_model
from unirank.training.export import export_onnx, random_inputs, torch_scores
from unirank.training.loss import multitask_loss
from unirank.training.sampling import in_batch_candidates

N_ITEMS = 40


def _model(seed: int = 0, n_categories: int = 6, **options: object) -> UniRankModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ModelConfig(
        n_items=N_ITEMS,
        n_users=10,
        n_tokens=25,
        n_categories=n_categories,
        dim=8,
        hidden=16,
        dropout=0.0,
        **options,  # type: ignore[arg-type]
    )
    neighbours = rng.integers(0, N_ITEMS, size=(N_ITEMS, 5))
    return UniRankModel(
        config,
        title_tokens=rng.integers(0, 25, size=(N_ITEMS, 4)),
        item_categories=rng.integers(0, n_categories, size=(N_ITEMS, 2)),
        item_popularity=rng.random(N_ITEMS),
        item_neighbours=neighbours,
        item_neighbour_weights=rng.random((N_ITEMS, 5)).astype(np.float32),
        item_neighbour_shares=rng.random((N_ITEMS, 5)).astype(np.float32),
        item_factors=rng.normal(size=(N_ITEMS, config.mf_factors)) if config.mf_factors else None,
    ).eval()


OPTIONS = [
    {},
    {"architecture": "mmoe", "n_experts": 3},
    {"impute_context": True},
    {"architecture": "mmoe", "impute_context": True, "use_task_type": False},
    {"mf_factors": 4, "impute_context": True},
]
OPTION_IDS = ["shared", "mmoe", "impute", "mmoe-impute-no-task", "mf-impute"]
SERVED_NODES = 120
"""Most operators an exported graph may have (Constant left out): the serving form exports these
options to 89-116 (72-97 before its index tables held int32, cast where they index, and its anchor
and history rows were built per call from the candidates' table instead of a second item table and
a table of title sums: 332 bytes less per item), where exporting the training forward gave 252-289."""

CO_ENGAGEMENT_AT_CANDIDATES_NODES = 30
"""What summing co-engagement at the candidates adds to a graph: 29 nodes (106-116 -> 135-145) for
the keys, their sort, the running sum, its scatter back to the keys' order and the two reads, most
of them shape arithmetic on the dynamic number of candidates."""


def _onnx_nodes(path: Path) -> int:
    return sum(1 for node in onnx.load(str(path)).graph.node if node.op_type != "Constant")


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_every_option_scores_all_items_like_forward_and_exports(
    options: dict[str, object], tmp_path: Path
) -> None:
    model = _model(**options)
    inputs = random_inputs(model, batch=6, history=5, query=3, candidates=1, seed=1)
    tensors = {name: torch.from_numpy(inputs.as_dict()[name]) for name in INPUT_NAMES}
    every = torch.arange(1, N_ITEMS).expand(6, -1)
    with torch.no_grad():
        forward = model(**{**tensors, "candidates": every})
        context = {k: v for k, v in tensors.items() if k != "candidates"}
        fast = model.score_all_items(**context)
    torch.testing.assert_close(fast, forward, rtol=1e-5, atol=1e-5)
    export_onnx(model, tmp_path / "model.onnx", max_history=5, max_query_tokens=3)
    _check_onnx_scores_like_training(model, tmp_path / "model.onnx")
    assert _onnx_nodes(tmp_path / "model.onnx") < SERVED_NODES
    again = build_model_from_checkpoint(model_checkpoint(model))
    np.testing.assert_allclose(torch_scores(again, inputs), torch_scores(model, inputs), atol=1e-6)


def _check_onnx_scores_like_training(model: UniRankModel, path: Path) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, shape in enumerate([(3, 7, 2, 11), (1, 1, 1, 3), (5, 20, 8, 39)]):
        batch = random_inputs(model, *shape, seed=seed + 10)
        (onnx_scores,) = session.run([OUTPUT_NAME], batch.as_dict())
        np.testing.assert_allclose(onnx_scores, torch_scores(model, batch), atol=1e-4, rtol=0)


def _serving_batches(model: UniRankModel) -> list[dict[str, torch.Tensor]]:
    """Random batches of several shapes with every task id (0 too) and a row of nothing but padding."""
    batches = []
    for seed, shape in enumerate([(1, 1, 1, 1), (6, 5, 3, 12), (13, 20, 8, 39)]):
        inputs = random_inputs(model, *shape, seed=seed)
        tensors = {name: torch.from_numpy(inputs.as_dict()[name]) for name in INPUT_NAMES}
        tensors["task"] = torch.arange(shape[0]) % (model.config.n_tasks + 1)
        for name in ("history", "query_tokens", "anchor_item", "category"):
            tensors[name][-1] = 0  # no context at all: imputation finds nothing
        tensors["candidates"][-1, -1] = 0
        batches.append(tensors)
    return batches


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("category_columns", [True, False], ids=["category-columns", "category-ids"])
def test_serving_module_scores_like_the_training_forward(
    options: dict[str, object], category_columns: bool
) -> None:
    n_categories = 6 if category_columns else CATEGORY_COLUMNS_MAX + 2
    model = _model(n_categories=n_categories, **options)
    serving = serving_model(model)
    assert serving.n_category_columns == (n_categories - 1 if category_columns else 0)
    with torch.no_grad():
        for batch in _serving_batches(model):
            expected = model(**batch)
            torch.testing.assert_close(serving(**batch), expected, rtol=0, atol=1e-5)
            assert (expected[-1, -1] == -1e9).item()


def test_serving_module_reads_the_padding_items_own_vector_as_a_missing_anchor() -> None:
    model = _model()
    with torch.no_grad():
        model.item_emb.weight[0] = 0.5  # zero in any trained model; the training forward still reads it
        serving = serving_model(model)  # the anchor row reads the candidates' table, row 0 included
        for batch in _serving_batches(model):
            torch.testing.assert_close(serving(**batch), model(**batch), rtol=0, atol=1e-5)


def test_many_categories_export_with_the_category_id_match(tmp_path: Path) -> None:
    model = _model(n_categories=CATEGORY_COLUMNS_MAX + 2, impute_context=True)
    export_onnx(model, tmp_path / "model.onnx", max_history=5, max_query_tokens=3)
    _check_onnx_scores_like_training(model, tmp_path / "model.onnx")
    assert _onnx_nodes(tmp_path / "model.onnx") < SERVED_NODES


def test_imputation_gives_the_latest_item_as_anchor_and_its_title_as_query() -> None:
    model = _model(impute_context=True)
    history = torch.tensor([[3, 7, 0, 0], [0, 0, 0, 0]])
    query = torch.tensor([[0, 0], [5, 0]])
    anchor, tokens = model._impute(history, query, torch.tensor([0, 9]))
    assert anchor.tolist() == [7, 9]  # row 0 had none: its latest play; row 1 keeps its own
    assert set(tokens[0].tolist()) - {0} == set(model.title_tokens[7].tolist()) - {0}
    assert set(tokens[1].tolist()) - {0} == {5}  # a row with a query keeps it
    plain = _model(impute_context=False)
    anchor, tokens = plain._impute(history, query, torch.tensor([0, 9]))
    assert anchor.tolist() == [0, 9] and tokens.shape == query.shape


def test_co_engagement_feature_reads_the_anchors_neighbours() -> None:
    model = _model()
    model.item_neighbours.zero_()
    model.item_neighbour_weights.zero_()
    model.item_neighbours[4, 0], model.item_neighbour_weights[4, 0] = 9, 1.0
    with torch.no_grad():
        for head in model.heads:  # only the co-engagement weight: score = that feature
            head.query.weight.zero_(), head.query.bias.zero_()
            head.cross.weight.zero_(), head.cross.bias.zero_()
            head.cross.bias[5] = 1.0
        scores = model(
            torch.tensor([2]),
            torch.tensor([1]),
            torch.tensor([[1]]),
            torch.tensor([[0]]),
            torch.tensor([4]),
            torch.tensor([0]),
            torch.tensor([[9, 10, 11]]),
        )
    assert scores[0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_mmoe_gates_differ_by_task() -> None:
    model = _model(architecture="mmoe", n_experts=3)
    context = torch.randn(4, 48)
    with torch.no_grad():
        model.shared.gates.bias.copy_(torch.arange(12, dtype=torch.float32))  # distinct per gate
        one = model.shared(context, torch.tensor([0, 0, 0, 0]))
        other = model.shared(context, torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(one, other)


def test_uncertainty_weighting_learns_per_task_scales() -> None:
    scores = torch.randn(6, 5)
    task = torch.tensor([1, 1, 2, 2, 3, 3])
    weights = torch.ones(5)
    log_var = torch.tensor([0.0, 0.0, 1.0, -1.0, 3.0])  # task 4 absent: its term must not count
    loss, per_task, _ = multitask_loss(scores, task, weights, log_var)
    expected = sum(torch.exp(-log_var[t]) * per_task[t] + 0.5 * log_var[t] for t in (1, 2, 3))
    torch.testing.assert_close(loss, expected)


def test_in_batch_candidates_hide_the_rows_own_item() -> None:
    got = in_batch_candidates(torch.tensor([5, 6, 5]))
    assert got.tolist() == [[0, 6, 0], [5, 0, 5], [0, 6, 0]]


def test_pool_negatives_come_from_the_rows_candidate_pool() -> None:
    from unirank.artifact import Catalog, TaskType
    from unirank.training.sampling import CandidatePoolNegatives

    catalog = Catalog.build(
        item_ids=["a", "b", "c", "d"],
        titles=["Red Moon", "Blue Moon", "Red Sun", "Green Field"],
        item_categories=[["x"], ["x", "y"], ["y"], ["y"]],
        maturity=[0] * 4,
        release_year=[0] * 4,
        popularity=[1.0] * 4,
        user_ids=["u"],
    )
    pool = CandidatePoolNegatives(catalog, seed=0)
    moon = catalog.tokens.index("moon")
    task = np.array([int(TaskType.SEARCH), int(TaskType.CATEGORY), int(TaskType.NOTIFICATION)])
    query = np.array([[moon, 0], [0, 0], [0, 0]])
    category = np.array([0, catalog.categories.index("y"), 0])
    items, log_q = pool.sample(task, query, category, positives=np.array([1, 2, 1]), k=20)
    assert set(items[0].tolist()) <= {0, 2}  # "Blue Moon" (index 2); "Red Moon" is the positive
    assert set(items[1].tolist()) <= {0, 3, 4} and set(items[1].tolist()) & {3, 4}  # y minus b
    assert not items[2].any() and not log_q[2].any()  # notification rows get no pool
    assert log_q[0, 0] == pytest.approx(np.log(20 / 2))


def test_the_mf_score_is_the_candidates_factors_against_the_history_mean_and_serves() -> None:
    # With time features too: the MF weight is the head's last output, after the time weights.
    model = _model(mf_factors=4, time_features=True)
    assert model.config.n_cross == 12 and model.config.mf_index == 11
    inputs = random_inputs(model, batch=5, history=6, query=3, candidates=9, seed=3)
    tensors = {k: torch.from_numpy(v) for k, v in inputs.as_dict().items() if v is not None}
    factors = model.item_factors.numpy()
    history = inputs.history
    played = (history > 0)[:, :, None]
    mean = (factors[history] * played).sum(1) / np.maximum(played.sum(1), 1)
    expected = np.einsum("bnk,bk->bn", factors[inputs.candidates], mean)
    serving = serving_model(model)
    with torch.no_grad():
        before = model(**tensors)
        torch.testing.assert_close(serving(**tensors), before, rtol=0, atol=1e-5)
        for head in model.heads:
            head.cross.bias[model.config.mf_index] += 1.0
        raised = model(**tensors)
        torch.testing.assert_close(serving_model(model)(**tensors), raised, rtol=0, atol=1e-5)
    real = inputs.candidates > 0
    np.testing.assert_allclose((raised - before).numpy()[real], expected[real], atol=1e-5)


def test_co_engagement_at_the_candidates_sums_what_a_row_over_the_items_holds() -> None:
    """Repeated neighbours add up, repeated and padding candidates read the same sums, and a
    candidate nobody lists reads 0, as scattering over a [B, items] row and reading it does."""
    rng = np.random.default_rng(0)
    for batch, listed, n in ((1, 1, 1), (4, 30, 9), (7, 300, 120)):
        index = torch.from_numpy(rng.integers(0, N_ITEMS, size=(batch, listed)))
        values = torch.from_numpy(rng.normal(size=(batch, listed)).astype(np.float32))
        candidates = torch.from_numpy(rng.integers(0, N_ITEMS, size=(batch, n)))
        row = torch.zeros(batch, N_ITEMS).scatter_add(1, index, values).gather(1, candidates)
        torch.testing.assert_close(co_engagement_at(index, values, candidates), row, rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_large_catalogues_sum_co_engagement_at_the_candidates_and_score_the_same(
    options: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond CO_ENGAGEMENT_ROW_MAX items the serving graph holds no [B, items] row: its torch
    form and its ONNX export score as the training forward does."""
    model = _model(impute_context=True, **{k: v for k, v in options.items() if k != "impute_context"})
    serving = ServingModel(model, co_engagement_row_max=0)
    assert serving.item_zeros is None
    with torch.no_grad():
        for batch in _serving_batches(model):
            torch.testing.assert_close(serving(**batch), model(**batch), rtol=0, atol=1e-5)
    monkeypatch.setattr(serving_module, "CO_ENGAGEMENT_ROW_MAX", 0)
    export_onnx(model, tmp_path / "model.onnx", max_history=5, max_query_tokens=3)
    _check_onnx_scores_like_training(model, tmp_path / "model.onnx")
    assert _onnx_nodes(tmp_path / "model.onnx") < SERVED_NODES + CO_ENGAGEMENT_AT_CANDIDATES_NODES
