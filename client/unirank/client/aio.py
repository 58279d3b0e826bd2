"""The asyncio UniRank client (grpc.aio): the same methods as the blocking one, awaitable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc

from unirank.client import codec
from unirank.client._common import (
    DEFAULT_TIMEOUT_S,
    HEALTH_CHECK_METHOD,
    CallSettings,
    HealthCodec,
    RequestFields,
    batch_outcomes,
    batch_rankings,
    build_request,
    channel_credentials,
    to_message,
)
from unirank.client.domain import (
    Category,
    Event,
    ModelInfo,
    NewReleases,
    Notification,
    Ranking,
    RecommendationRequest,
    RecordedEvents,
    RelatedItems,
    Search,
)
from unirank.client.errors import UniRankError, error_from_rpc
from unirank.client.overload import (
    DEFAULT_THROTTLE_K,
    AdaptiveConcurrencyLimit,
    AdaptiveThrottle,
    OverloadControl,
    make_throttle,
)
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

_Response = TypeVar("_Response")


class AsyncRecommenderClient:
    """Asyncio client of ``unirank.v1.RecommenderService``; create it inside the running loop.

    >>> async with AsyncRecommenderClient("localhost:50151") as client:
    ...     ranking = await client.search("space opera", user_id="u42", max_results=5)

    Every call gets the client's deadline (``timeout``, 2 s by default) unless it passes its
    own ``timeout=``; every non-OK status is raised as :class:`~unirank.client.UniRankError`.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        bearer_token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
        throttle_k: float | None = DEFAULT_THROTTLE_K,
        concurrency_limit: AdaptiveConcurrencyLimit | None = None,
    ) -> None:
        """Open a (lazy) channel to ``target`` ("host:port").

        ``credentials`` wins over ``tls``/``root_certificates``; with none of them the channel
        is plaintext. ``bearer_token`` is sent as ``authorization: Bearer ...`` metadata.
        ``timeout`` is the default deadline in seconds; None means calls have none.
        ``throttle_k`` is adaptive throttling's K (:class:`~unirank.client.AdaptiveThrottle`):
        once the server refuses calls for overload, this client sends about K times what it
        accepts and refuses the rest itself (RESOURCE_EXHAUSTED, reason ``THROTTLED_LOCALLY``,
        counted in ``throttle.rejected_locally``); None turns throttling off.
        ``concurrency_limit`` (off by default) also bounds the calls in flight by the server's
        latency (:class:`~unirank.client.AdaptiveConcurrencyLimit`): a latency-sensitive caller
        keeps the server near its unloaded latency under any load, and calls over the limit are
        refused here the same way (counted in ``concurrency_limit.rejected_locally``).
        """
        self.target = target
        self.throttle: AdaptiveThrottle | None = make_throttle(throttle_k)
        """The client-side adaptive throttle (None when off); its counters are the client's metrics."""
        self.concurrency_limit = concurrency_limit
        """The adaptive concurrency limit (None when off); its counters are the client's metrics."""
        self._overload = OverloadControl(self.throttle, concurrency_limit)
        self._settings = CallSettings.create(timeout=timeout, bearer_token=bearer_token, metadata=metadata)
        secure = channel_credentials(credentials, root_certificates, tls)
        options = list(channel_options)
        self._channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(target, secure, options=options)
            if secure is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._health: HealthCodec | None = None

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: Any,
        timeout: float | None,
        *,
        throttled: bool = True,
    ) -> _Response:
        with self._overload.guard(request, enabled=throttled) as outcome:
            try:
                response = await method(
                    request, timeout=self._settings.timeout(timeout), metadata=self._settings.call_metadata()
                )
            except grpc.RpcError as error:
                outcome.answer(getattr(error, "code", lambda: None)())
                raise error_from_rpc(error) from error
            outcome.answer(None)
        return response

    # One method per use-case -------------------------------------------------------------

    async def notification(
        self,
        user_id: str,
        *,
        history_item_ids: Sequence[str] = (),
        timeout: float | None = None,
        **fields: Unpack[RequestFields],
    ) -> Ranking:
        """Items to push to ``user_id``."""
        task = Notification()
        return await self.recommend(
            build_request(task, user_id=user_id, history_item_ids=history_item_ids, fields=fields),
            timeout=timeout,
        )

    async def new_releases(
        self,
        user_id: str,
        *,
        window_years: int = 0,
        history_item_ids: Sequence[str] = (),
        timeout: float | None = None,
        **fields: Unpack[RequestFields],
    ) -> Ranking:
        """Recently released items for ``user_id``; ``window_years`` 0 is the server's default."""
        task = NewReleases(window_years=window_years)
        return await self.recommend(
            build_request(task, user_id=user_id, history_item_ids=history_item_ids, fields=fields),
            timeout=timeout,
        )

    async def related_items(
        self,
        anchor_item_id: str,
        *,
        user_id: str = "",
        history_item_ids: Sequence[str] = (),
        timeout: float | None = None,
        **fields: Unpack[RequestFields],
    ) -> Ranking:
        """Items like ``anchor_item_id``."""
        task = RelatedItems(anchor_item_id=anchor_item_id)
        return await self.recommend(
            build_request(task, user_id=user_id, history_item_ids=history_item_ids, fields=fields),
            timeout=timeout,
        )

    async def search(
        self,
        query: str,
        *,
        user_id: str = "",
        history_item_ids: Sequence[str] = (),
        timeout: float | None = None,
        **fields: Unpack[RequestFields],
    ) -> Ranking:
        """Items matching the free-text ``query``."""
        task = Search(query=query)
        return await self.recommend(
            build_request(task, user_id=user_id, history_item_ids=history_item_ids, fields=fields),
            timeout=timeout,
        )

    async def category(
        self,
        category_id: str,
        *,
        user_id: str = "",
        history_item_ids: Sequence[str] = (),
        timeout: float | None = None,
        **fields: Unpack[RequestFields],
    ) -> Ranking:
        """Items for the category / genre row ``category_id``."""
        task = Category(category_id=category_id)
        return await self.recommend(
            build_request(task, user_id=user_id, history_item_ids=history_item_ids, fields=fields),
            timeout=timeout,
        )

    # The raw API ---------------------------------------------------------------------------

    async def recommend(
        self, request: pb.RecommendRequest | RecommendationRequest, *, timeout: float | None = None
    ) -> Ranking:
        """Send one request, protobuf or domain form, and decode the ranking."""
        response = await self._call(self._stub.Recommend, to_message(request), timeout)
        return codec.decode_ranking(response)

    async def recommend_batch(
        self,
        requests: Sequence[pb.RecommendRequest | RecommendationRequest],
        *,
        timeout: float | None = None,
    ) -> list[Ranking]:
        """Send many requests (any mix of use-cases) in one call; rankings in request order.

        A member the server could not answer (e.g. no execution slot for it) fails alone: this
        raises :class:`~unirank.client.BatchMemberError`, whose ``results`` still hold the
        others' rankings; :meth:`recommend_batch_outcomes` returns them without raising.
        """
        return batch_rankings(await self._send_batch(requests, timeout))

    async def recommend_batch_outcomes(
        self,
        requests: Sequence[pb.RecommendRequest | RecommendationRequest],
        *,
        timeout: float | None = None,
    ) -> list[Ranking | UniRankError]:
        """Like :meth:`recommend_batch`, but each member's ranking or its own error, in request order."""
        return batch_outcomes(await self._send_batch(requests, timeout))

    async def _send_batch(
        self, requests: Sequence[pb.RecommendRequest | RecommendationRequest], timeout: float | None
    ) -> pb.RecommendBatchResponse:
        batch = pb.RecommendBatchRequest(requests=[to_message(request) for request in requests])
        return await self._call(self._stub.RecommendBatch, batch, timeout)

    async def record_events(self, events: Sequence[Event], *, timeout: float | None = None) -> RecordedEvents:
        """Feed users' engagements to the online feature store (within each use-case's freshness window
        the next requests reflect them)."""
        response = await self._call(self._stub.RecordEvents, codec.encode_events(events), timeout)
        return codec.decode_recorded(response)

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The server's loaded model and deployment profile."""
        response = await self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
        return codec.decode_model_info(response)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Standard ``grpc.health.v1`` Check: ``"SERVING"``, ``"NOT_SERVING"``, ...

        ``service=""`` asks about the server as a whole; an unknown service raises
        :class:`~unirank.client.UniRankError` with code ``NOT_FOUND``.
        """
        if self._health is None:
            self._health = HealthCodec.create()
        codec_ = self._health
        check = self._channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=codec_.request_class.SerializeToString,
            response_deserializer=codec_.response_class.FromString,
        )
        return codec_.status_name(await self._call(check, codec_.request(service), timeout, throttled=False))
