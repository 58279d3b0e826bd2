"""The one interceptor that applies authentication, admission control, draining, request limits, the
error table and RPC telemetry to every UniRank RPC (health and reflection only meet authentication,
where the profile asks for it; GetServingStats skips admission and telemetry)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from unirank.server.admission import Admission
from unirank.server.codec import RequestLimits, limit_violations
from unirank.server.errors import Draining, InvalidArgument, Overloaded, ServingError, to_rpc_status
from unirank.server.security import Authenticator, Principal
from unirank.server.telemetry import MethodInfo, Telemetry
from unirank.server.telemetry.logs import ThrottledLog

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/unirank.v1."
UNDECODABLE_LOG_INTERVAL_S = 10.0
"""At most one log line per method this often for requests that do not parse (with a count)."""
BATCH_METHOD = "/unirank.v1.RecommenderService/RecommendBatch"
"""Admitted member by member by the servicer (a batch takes one slot per member), not as one RPC."""


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


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Decode for labelling only: a message that does not parse is labelled as no use-case."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return deserializer(b"")

    return decode


def _undecodable(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Decode, or stand in a :class:`_Refused` for a message that does not parse."""

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            name = type(deserializer(b"")).__name__
            return _Refused(InvalidArgument.single("(request)", f"not a valid {name} message: {exc}"), None)

    return decode


_HANDLER_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def decoding_tolerant(
    handler: grpc.RpcMethodHandler, on_refused: Callable[[], None]
) -> grpc.RpcMethodHandler:
    """``handler`` answering INVALID_ARGUMENT for a request message that does not parse.

    grpc.aio answers UNKNOWN, with an ERROR traceback in the log, when a deserializer raises: for
    every method UniRank does not guard itself (health, reflection, GetServingStats) the message
    is decoded here instead, and a bad one is refused before the servicer acts on it. A coroutine
    handler stays a coroutine and an async generator a generator, as grpc.aio tells them apart.
    """
    deserializer = handler.request_deserializer
    kind = next((k for k in _HANDLER_KINDS if getattr(handler, k) is not None), None)
    if deserializer is None or kind is None:
        return handler
    behaviour: Callable[..., Any] = getattr(handler, kind)
    generates = inspect.isasyncgenfunction(behaviour)
    if not (generates or inspect.iscoroutinefunction(behaviour)):
        return handler
    streams_requests = kind.startswith("stream_")

    async def refuse(refused: _Refused, context: grpc.aio.ServicerContext) -> None:
        on_refused()
        await abort_with(context, refused.error)

    async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for request in requests:
            if isinstance(request, _Refused):
                await refuse(request, context)
            yield request

    def requests_of(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return checked(request, context) if streams_requests else request

    if generates:

        async def run_generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Refused):
                await refuse(request, context)
            async for response in behaviour(requests_of(request, context), context):
                yield response

        run: Callable[..., Any] = run_generator
    else:

        async def run_coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Refused):
                await refuse(request, context)
            return await behaviour(requests_of(request, context), context)

        run = run_coroutine
    return _HANDLER_KINDS[kind](run, _undecodable(deserializer), handler.response_serializer)


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
        self._shed_handlers: dict[tuple[str, bool], grpc.RpcMethodHandler] = {}
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._tolerant: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self.undecodable = 0
        """Calls to unguarded methods (health, reflection, GetServingStats) refused because their
        request message did not parse."""
        self._undecodable_log = ThrottledLog(log, UNDECODABLE_LOG_INTERVAL_S)

    def _shed(self, method: str, info: MethodInfo, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The cached handler that refuses ``method`` while admission is saturated.

        Its status (with RetryInfo) is built once and the request is decoded only to label the
        refusal with its use-case: no limits checked, no waiting, no slot, and no span (a shed
        call is counted in the metrics, not traced: under overload thousands of refusals a second
        would be traced, the very work shedding exists to avoid). Calls refused after waiting in
        line are traced like any other.
        """
        admission = self._admission
        key = (method, admission.draining)
        cached = self._shed_handlers.get(key)
        if cached is not None:
            return cached
        error: ServingError = (
            Draining()
            if admission.draining
            else Overloaded(f"server at its limit of {admission.max_in_flight} requests in flight")
        )
        status = rpc_status.to_status(to_rpc_status(error))
        telemetry = self._telemetry

        code = error.code

        async def shed(request: Any, context: grpc.aio.ServicerContext) -> None:
            admission.arrivals += 1
            telemetry.count_shed(info, request, code)
            await context.abort_with_status(status)

        deserializer = handler.request_deserializer
        shed_handler = grpc.unary_unary_rpc_method_handler(
            shed, request_deserializer=_lenient(deserializer), response_serializer=handler.response_serializer
        )
        self._shed_handlers[key] = shed_handler
        return shed_handler

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
            return self._decoding_tolerant(method, handler) if denial is None else _refusal(handler, denial)
        telemetry = self._telemetry
        info = telemetry.method(method)
        if info is None:  # GetServingStats: monitoring must work when the server is saturated
            return self._decoding_tolerant(method, handler) if denial is None else _refusal(handler, denial)
        admission = self._admission
        if denial is None and admission.saturated:
            # Shed before any per-call work: a refusal must cost much less than an answer, or
            # under overload the process spends its CPU refusing and the backlog grows anyway.
            return self._shed(method, info, handler)
        if principal is None and denial is None:
            # Nothing per call to close over: one guarded handler per method serves every call.
            cached = self._guarded.get(method)
            if cached is None or cached[0] is not handler:
                cached = (handler, self._guard(method, info, handler, None, None))
                self._guarded[method] = cached
            return cached[1]
        return self._guard(method, info, handler, principal, denial)

    def _decoding_tolerant(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The cached :func:`decoding_tolerant` form of an unguarded method's handler."""
        cached = self._tolerant.get(method)
        if cached is None or cached[0] is not handler:

            def refused() -> None:
                self.undecodable += 1
                self._undecodable_log.warning(
                    method, "refused a %s call: its request message does not parse", method
                )

            cached = (handler, decoding_tolerant(handler, refused))
            self._tolerant[method] = cached
        return cached[1]

    def _guard(
        self,
        method: str,
        info: MethodInfo,
        handler: grpc.RpcMethodHandler,
        principal: Principal | None,
        denial: ServingError | None,
    ) -> grpc.RpcMethodHandler:
        """``handler`` behind telemetry, admission, the request limits and the error table."""
        telemetry = self._telemetry
        admission = self._admission
        auth = self._auth
        behaviour = handler.unary_unary
        whole = method != BATCH_METHOD  # one slot for the call, else one per member (the servicer)

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refused = request if isinstance(request, _Refused) else None
            if refused is not None:
                request = refused.request
            scope = telemetry.start_rpc(info, request, context)
            try:
                try:
                    if denial is not None:  # before admission: unknown callers take no slot ...
                        raise denial
                    if refused is not None:  # ... and neither do requests refused as malformed
                        raise refused.error
                    if whole:
                        await admission.enter(scope.task, context.time_remaining())
                except ServingError as error:
                    scope.fail(error.code, error)
                    await abort_with(context, error)
                admitted_at = time.perf_counter()
                try:
                    if principal is not None and auth is not None:
                        auth.authorize_tasks(principal, request)
                    response = await behaviour(request, context)
                    if whole:
                        admission.served(scope.task, time.perf_counter() - admitted_at)
                    return response
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
                    if whole:
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
