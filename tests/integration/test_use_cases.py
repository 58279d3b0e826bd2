"""Every use-case answered end to end: real server on port 0, called through the real client."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from unirank.artifact import TASKS, Artifact, Catalog, load_artifact
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.client.domain import Category, NewReleases, RecommendationRequest, Search

from ..conftest import running_server


@pytest.fixture(scope="module")
def artifact(artifact_dir: Path) -> Artifact:
    return load_artifact(artifact_dir)


def _known(artifact: Artifact) -> dict[str, str]:
    catalog = artifact.catalog
    popular = artifact.retrieval.popular_items
    item = catalog.items.key(int(popular[0]))
    # A query built from a real title token that retrieval can match.
    title_token = next(t for t in catalog.titles[int(popular[3])].lower().split() if t.isalpha())
    return {
        "user": catalog.users.key(1),
        "item": item,
        "history": catalog.items.key(int(popular[5])),
        "query": title_token,
        "category": catalog.categories.key(1),
    }


async def test_every_use_case_ranks_catalogue_items(server_factory, artifact: Artifact) -> None:
    ids = _known(artifact)
    catalog = artifact.catalog
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        rankings = {
            "notification": await client.notification(
                ids["user"], history_item_ids=[ids["history"]], debug=True
            ),
            "related_items": await client.related_items(ids["item"], debug=True),
            "search": await client.search(ids["query"], user_id=ids["user"], debug=True),
            "category": await client.category(ids["category"], user_id=ids["user"], debug=True),
            "new_releases": await client.new_releases(
                ids["user"], history_item_ids=[ids["history"]], debug=True
            ),
        }
    assert set(rankings) == {spec.name for spec in TASKS}
    for task, ranking in rankings.items():
        assert ranking.task_type == task
        assert not ranking.fallback, (task, ranking.fallback_detail)
        assert len(ranking.items) == 10
        assert ranking.model_version == artifact.model_version
        assert ranking.profile == "cpu-realtime"
        scores = [item.score for item in ranking.items]
        assert scores == sorted(scores, reverse=True) or task == "category"  # category boosts recent
        assert len({item.item_id for item in ranking.items}) == 10
        for item in ranking.items:
            index = catalog.items.index(item.item_id)
            assert index > 0 and item.title == catalog.titles[index]
            assert item.retrieval_source
        assert {"retrieval", "inference"} <= set(ranking.timings)
    for seen_excluded in ("notification", "new_releases"):
        assert ids["history"] not in {i.item_id for i in rankings[seen_excluded].items}
    assert ids["item"] not in {i.item_id for i in rankings["related_items"].items}  # exclude_anchor
    assert {i.retrieval_source for i in rankings["search"].items} == {"lexical"}
    category = ids["category"]
    assert all(
        category in catalog.item_categories[catalog.items.index(i.item_id)]
        for i in rankings["category"].items
    )
    # Served now, from a catalogue whose newest releases are this year's: the last three years.
    newest = catalog.newest_release_year
    assert {_year(catalog, i.item_id) for i in rankings["new_releases"].items} <= {
        newest - 2,
        newest - 1,
        newest,
    }
    assert {i.retrieval_source for i in rankings["new_releases"].items} == {"new_releases"}


def _year(catalog: Catalog, item_id: str) -> int:
    return catalog.release_year[catalog.items.index(item_id)]


async def test_new_releases_follow_the_request_time_and_window(server_factory, artifact: Artifact) -> None:
    catalog = artifact.catalog
    newest = catalog.newest_release_year
    last_year_ms = int(dt.datetime(newest - 1, 7, 1, tzinfo=dt.UTC).timestamp() * 1000)
    user = catalog.users.key(1)
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        one_year = await client.new_releases(
            user, window_years=1, event_time_unix_ms=last_year_ms, max_results=50
        )
        default = await client.new_releases(user, event_time_unix_ms=last_year_ms, max_results=50)
        cold = await client.new_releases("no-such-user", window_years=1, max_results=50)
    assert not one_year.fallback and len(one_year.items) > 5
    assert {_year(catalog, i.item_id) for i in one_year.items} == {newest - 1}  # newest: not out yet
    default_years = {_year(catalog, i.item_id) for i in default.items}
    assert default_years <= {newest - 3, newest - 2, newest - 1} and len(default_years) > 1
    # A user the model does not know gets the most played of the window (that the profile's rules
    # keep), and is told so.
    assert (cold.fallback, cold.fallback_reason) == (True, "cold_start") and cold.items
    popular = [catalog.items.key(i) for i in artifact.retrieval.popular_items.tolist()]
    positions = [popular.index(i.item_id) for i in cold.items]
    assert positions == sorted(positions)
    assert {_year(catalog, i.item_id) for i in cold.items} == {newest}


async def test_unknown_ids_fall_back_to_popular_and_say_so(server_factory, artifact: Artifact) -> None:
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        cold_user = await client.notification("no-such-user")
        cold_anchor = await client.related_items("no-such-item")
        cold_query = await client.search("zzqx qqzv")
        cold_category = await client.category("no-such-category")
    popular = [artifact.catalog.items.key(int(i)) for i in artifact.retrieval.popular_items[:10]]
    for ranking in (cold_user, cold_anchor, cold_query, cold_category):
        assert ranking.fallback and ranking.fallback_reason == "cold_start"
        assert ranking.fallback_detail
        assert ranking.items
    assert [i.item_id for i in cold_query.items] == popular[: len(cold_query.items)]


async def test_malformed_input_is_invalid_argument_naming_the_field(server_factory) -> None:
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        with pytest.raises(UniRankError) as blank_query:
            await client.search("   ")
        with pytest.raises(UniRankError) as bad_id:
            await client.related_items("has space")
        with pytest.raises(UniRankError) as too_many:
            await client.search("space", max_results=100_000)
        with pytest.raises(UniRankError) as no_task:
            await client.recommend(
                __import__("unirank.v1.recommender_pb2").v1.recommender_pb2.RecommendRequest()
            )
    assert blank_query.value.code == "INVALID_ARGUMENT"
    assert [f for f, _ in blank_query.value.field_violations] == ["context.search.query"]
    assert [f for f, _ in bad_id.value.field_violations] == ["context.related_items.anchor_item_id"]
    assert [f for f, _ in too_many.value.field_violations] == ["options.max_results"]
    assert [f for f, _ in no_task.value.field_violations] == ["context.task"]


async def test_options_candidates_exclusions_and_max_results(server_factory, artifact: Artifact) -> None:
    catalog = artifact.catalog
    candidates = [catalog.items.key(i) for i in range(1, 31)]
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        ranking = await client.related_items(
            catalog.items.key(40),
            candidate_item_ids=candidates,
            excluded_item_ids=candidates[:5],
            max_results=7,
            debug=True,
        )
    returned = [i.item_id for i in ranking.items]
    assert len(returned) == 7
    assert set(returned) <= set(candidates[5:])
    assert {i.retrieval_source for i in ranking.items} == {"caller"}


async def test_batch_mixes_use_cases_in_request_order(server_factory, artifact: Artifact) -> None:
    ids = _known(artifact)
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        rankings = await client.recommend_batch(
            [
                RecommendationRequest(task=Search(query=ids["query"]), request_id="a"),
                RecommendationRequest(task=Category(category_id=ids["category"]), request_id="b"),
                RecommendationRequest(task=Search(query=ids["query"]), request_id="c", max_results=3),
                RecommendationRequest(task=NewReleases(), user_id=ids["user"], request_id="d"),
            ]
        )
        with pytest.raises(UniRankError) as bad_member:
            await client.recommend_batch(
                [
                    RecommendationRequest(task=Search(query=ids["query"])),
                    RecommendationRequest(task=Search(query="")),
                ]
            )
    assert [r.request_id for r in rankings] == ["a", "b", "c", "d"]
    assert [r.task_type for r in rankings] == ["search", "category", "search", "new_releases"]
    assert len(rankings[2].items) == 3
    assert [f for f, _ in bad_member.value.field_violations] == ["requests[1].context.search.query"]


async def test_repeat_search_is_served_from_cache(server_factory, artifact: Artifact) -> None:
    ids = _known(artifact)
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        first = await client.search(ids["query"], request_id="one")
        second = await client.search(ids["query"], request_id="two")
    assert not first.served_from_cache and second.served_from_cache
    assert second.request_id == "two"
    assert [i.item_id for i in first.items] == [i.item_id for i in second.items]


async def test_model_info_health_and_reflection(server_factory, artifact: Artifact) -> None:
    async with server_factory() as server, AsyncRecommenderClient(server.address) as client:
        info = await client.model_info()
        assert await client.health() == "SERVING"
        assert await client.health("unirank.v1.RecommenderService") == "SERVING"
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = [
                answer
                async for answer in stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            ]
    assert info.model_version == artifact.model_version
    assert info.backend == "onnxruntime" and info.profile == "cpu-realtime"
    assert {t.task_type for t in info.tasks if t.served} == {spec.name for spec in TASKS}
    assert all(t.offline_metrics for t in info.tasks)
    services = {s.name for s in answers[0].list_services_response.service}
    assert {"unirank.v1.RecommenderService", "grpc.health.v1.Health"} <= services


async def test_profile_that_does_not_serve_a_task_answers_failed_precondition(server_factory) -> None:
    async with server_factory("search-edge") as server, AsyncRecommenderClient(server.address) as client:
        with pytest.raises(UniRankError) as error:
            await client.category("anything")
        ranking = await client.search("zzqx")
    assert error.value.code == "FAILED_PRECONDITION"
    assert "search-edge" in error.value.message
    assert ranking.task_type == "search"


@pytest.fixture(scope="module")
def four_task_artifact(artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session artifact's data with a four-head model: an artifact from before new_releases."""
    from unirank.model.net import ModelConfig, UniRankModel
    from unirank.training.export import write_artifact

    catalog = artifact.catalog
    model = UniRankModel(
        ModelConfig(**{**artifact.manifest["model_config"], "n_tasks": 4}),
        title_tokens=catalog.title_token_matrix(),
        item_categories=catalog.category_matrix(),
        item_popularity=np.asarray(catalog.popularity, dtype=np.float32),
    )
    metrics = {
        key: {task: value for task, value in by_task.items() if task != "new_releases"}
        for key, by_task in artifact.metrics.items()
        if key in ("tasks", "score_reference")
    }
    out = tmp_path_factory.mktemp("four-heads")
    write_artifact(
        out,
        model,
        catalog,
        artifact.retrieval,
        metrics,
        encoder_config=artifact.manifest["encoder"],
        training_data=artifact.manifest["training_data"],
        activity=artifact.activity,
    )
    return out


async def test_an_artifact_without_a_new_releases_head_serves_the_other_use_cases(
    four_task_artifact: Path, artifact: Artifact
) -> None:
    user = artifact.catalog.users.key(1)
    async with (
        running_server("cpu-realtime", four_task_artifact) as server,  # warm-up skips the missing head
        AsyncRecommenderClient(server.address) as client,
    ):
        with pytest.raises(UniRankError) as error:
            await client.new_releases(user)
        with pytest.raises(UniRankError) as in_batch:
            await client.recommend_batch([RecommendationRequest(task=NewReleases(), user_id=user)])
        ranking = await client.notification(user)
        info = await client.model_info()
    for refused in (error.value, in_batch.value):
        assert refused.code == "FAILED_PRECONDITION"
        assert "new_releases" in refused.message and "4 tasks" in refused.message
    assert not ranking.fallback and ranking.items
    assert {t.task_type for t in info.tasks if t.served} == {spec.name for spec in TASKS} - {"new_releases"}
