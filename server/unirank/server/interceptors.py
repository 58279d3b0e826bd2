"""The one interceptor that applies admission control, draining, the error table and RPC telemetry
to every UniRank RPC (health, reflection and GetServingStats pass through untouched)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from unirank.server.errors import Draining, InvalidArgument, Overloaded, ServingError, to_rpc_status
from unirank.server.telemetry import Telemetry

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/unirank.v1."


class Admission:
    """Counts in-flight RPCs; refuses past the limit and while draining."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.draining = False

    def enter(self) -> None:
        if self.draining:
            raise Draining()
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(f"{self.in_flight} requests in flight, limit {self.max_in_flight}")
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1


class _Undecodable:
    """Stands in for a request body that is not valid protobuf, so the handler can refuse it."""

    def __init__(self, error: str, empty: Any) -> None:
        self.error = error
        self.empty = empty


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpc.aio answers UNKNOWN when deserialisation raises; decode here and refuse precisely."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return _Undecodable(str(exc), deserializer(b""))

    return decode


async def abort_with(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    await context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handler's behaviour (not just ``continuation``) so it sees handler exceptions.

    Every RPC it wraps gets a telemetry scope (SERVER span, call duration, status code) opened
    before admission, so refused and failed calls are counted and traced like served ones.
    """

    def __init__(self, admission: Admission, telemetry: Telemetry | None = None) -> None:
        self._admission = admission
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX) or handler.unary_unary is None:
            return handler
        telemetry = self._telemetry
        info = telemetry.method(method)
        if info is None:  # GetServingStats: monitoring must work when the server is saturated
            return handler
        behaviour = handler.unary_unary
        admission = self._admission

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            undecodable = request if isinstance(request, _Undecodable) else None
            if undecodable is not None:
                request = undecodable.empty
            scope = telemetry.start_rpc(info, request, context)
            try:
                try:
                    admission.enter()
                except ServingError as error:
                    scope.fail(error.code, error)
                    await abort_with(context, error)
                try:
                    if undecodable is not None:
                        raise InvalidArgument.single(
                            "(request)", f"not a valid {type(request).__name__} message: {undecodable.error}"
                        )
                    return await behaviour(request, context)
                except ServingError as error:
                    scope.fail(error.code, error)
                    await abort_with(context, error)
                except grpc.aio.AbortError:
                    if scope.code is grpc.StatusCode.OK:  # aborted by the handler itself
                        scope.fail(context.code() or grpc.StatusCode.UNKNOWN)
                    raise
                except Exception as exc:
                    log.exception("unhandled error in %s", method)
                    scope.fail(grpc.StatusCode.INTERNAL, exc)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error (see server log)")
                finally:
                    admission.exit()
            except asyncio.CancelledError:
                scope.fail(grpc.StatusCode.CANCELLED)
                raise
            finally:
                telemetry.end_rpc(scope)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
