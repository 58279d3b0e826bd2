"""The one interceptor that applies authentication, admission control, draining, request limits, the
error table and RPC telemetry to every UniRank RPC (health and reflection only meet authentication,
where the profile asks for it; GetServingStats skips admission and telemetry)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from unirank.server.codec import RequestLimits, limit_violations
from unirank.server.errors import Draining, InvalidArgument, Overloaded, ServingError, to_rpc_status
from unirank.server.security import Authenticator, Principal
from unirank.server.telemetry import Telemetry

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/unirank.v1."


class Admission:
    """Counts in-flight RPCs; refuses past the limit and while draining."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.draining = False
        self.arrivals = 0
        """RPCs that reached admission so far, admitted or not (draining watches it settle)."""

    def enter(self) -> None:
        self.arrivals += 1
        if self.draining:
            raise Draining()
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(f"{self.in_flight} requests in flight, limit {self.max_in_flight}")
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1


class _Refused:
    """Stands in for a request refused while decoding (not protobuf, too large, lists over the
    profile's limits), so the handler can answer INVALID_ARGUMENT with telemetry like any other."""

    def __init__(self, error: InvalidArgument, request: Any) -> None:
        self.error = error
        self.request = request


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, limits: RequestLimits
) -> Callable[[bytes], Any] | None:
    """grpc.aio answers UNKNOWN when deserialisation raises; decode here and refuse precisely."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        if len(raw) > limits.max_message_bytes:
            return _Refused(
                InvalidArgument.single(
                    "(request)",
                    f"message of {len(raw)} bytes exceeds the limit of {limits.max_message_bytes} bytes "
                    "(server.max_message_bytes)",
                ),
                deserializer(b""),
            )
        try:
            message = deserializer(raw)
        except DecodeError as exc:
            empty = deserializer(b"")
            error = InvalidArgument.single("(request)", f"not a valid {type(empty).__name__} message: {exc}")
            return _Refused(error, empty)
        violations = limit_violations(message, limits)
        return _Refused(InvalidArgument(violations), message) if violations else message

    return decode


def _refusal(handler: grpc.RpcMethodHandler, error: ServingError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that refuses the call without reading its request."""
    status = rpc_status.to_status(to_rpc_status(error))

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, None, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, None, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, None, serialize)
    return grpc.stream_stream_rpc_method_handler(refuse, None, serialize)


async def abort_with(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    await context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handler's behaviour (not just ``continuation``) so it sees handler exceptions.

    Every RPC it wraps gets a telemetry scope (SERVER span, call duration, status code) opened
    before admission, so refused and failed calls are counted and traced like served ones.
    """

    def __init__(
        self,
        admission: Admission,
        telemetry: Telemetry | None = None,
        *,
        limits: RequestLimits | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self._admission = admission
        self._telemetry = telemetry if telemetry is not None else Telemetry.disabled()
        self._limits = limits if limits is not None else RequestLimits()
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        auth = self._auth
        principal: Principal | None = None
        denial: ServingError | None = None
        if auth is not None and auth.guards(method):
            try:
                principal = auth.authenticate(handler_call_details.invocation_metadata)
                auth.authorize_method(principal, method)
            except ServingError as error:
                denial = error
        if not method.startswith(SERVICE_PREFIX) or handler.unary_unary is None:
            return handler if denial is None else _refusal(handler, denial)
        telemetry = self._telemetry
        info = telemetry.method(method)
        if info is None:  # GetServingStats: monitoring must work when the server is saturated
            return handler if denial is None else _refusal(handler, denial)
        behaviour = handler.unary_unary
        admission = self._admission

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refused = request if isinstance(request, _Refused) else None
            if refused is not None:
                request = refused.request
            scope = telemetry.start_rpc(info, request, context)
            try:
                try:
                    if denial is not None:  # before admission: unknown callers take no slot
                        raise denial
                    admission.enter()
                except ServingError as error:
                    scope.fail(error.code, error)
                    await abort_with(context, error)
                try:
                    if refused is not None:
                        raise refused.error
                    if principal is not None and auth is not None:
                        auth.authorize_tasks(principal, request)
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
            request_deserializer=_tolerant(handler.request_deserializer, self._limits),
            response_serializer=handler.response_serializer,
        )
