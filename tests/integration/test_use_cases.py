"""Every use-case answered end to end: real server on port 0, called through the real client."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from unirank.artifact import Artifact, load_artifact
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.client.domain import Category, RecommendationRequest, Search


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


async def test_all_four_use_cases_rank_catalogue_items(server_factory, artifact: Artifact) -> None:
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
        }
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
    assert ids["history"] not in {i.item_id for i in rankings["notification"].items}  # exclude_seen
    assert ids["item"] not in {i.item_id for i in rankings["related_items"].items}  # exclude_anchor
    assert {i.retrieval_source for i in rankings["search"].items} == {"lexical"}
    category = ids["category"]
    assert all(
        category in catalog.item_categories[catalog.items.index(i.item_id)]
        for i in rankings["category"].items
    )


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
            ]
        )
        with pytest.raises(UniRankError) as bad_member:
            await client.recommend_batch(
                [
                    RecommendationRequest(task=Search(query=ids["query"])),
                    RecommendationRequest(task=Search(query="")),
                ]
            )
    assert [r.request_id for r in rankings] == ["a", "b", "c"]
    assert [r.task_type for r in rankings] == ["search", "category", "search"]
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
    assert {t.task_type for t in info.tasks if t.served} == {
        "notification",
        "related_items",
        "search",
        "category",
    }
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
