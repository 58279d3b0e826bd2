"""The gRPC transport's own bounds, from the profile's ``[server]``: channel arguments, and the
interceptor that ends a call whose request message does not arrive in time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from unirank.server.admission import OpenCalls
from unirank.server.config import ServerSection
from unirank.server.errors import DeadlineExceeded, InvalidArgument, ServingError
from unirank.server.interceptors import abort_with


def server_options(limits: ServerSection, *, reuse_port: bool) -> list[tuple[str, Any]]:
    """Channel arguments of the server (``grpc.aio.server(options=...)``)."""
    connections = limits.connections
    ms = 1000
    options: list[tuple[str, Any]] = [
        # Workers of one group share the port; a lone server must own it (tests bind port 0).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Up to twice the limit is read so the interceptor can refuse it by name
        # (INVALID_ARGUMENT); beyond that gRPC cuts the message off unread.
        ("grpc.max_receive_message_length", 2 * limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        # Soft and hard limit alike: past it core refuses every new call, not a random share.
        ("grpc.server.max_pending_requests", limits.max_pending_rpcs),
        ("grpc.server.max_pending_requests_hard_limit", limits.max_pending_rpcs),
        ("grpc.max_concurrent_streams", connections.max_streams_per_connection),
        ("grpc.server_handshake_timeout_ms", connections.handshake_timeout_ms),
        ("grpc.keepalive_time_ms", int(connections.keepalive_time_s * ms)),
        ("grpc.keepalive_timeout_ms", int(connections.keepalive_timeout_s * ms)),
        ("grpc.max_connection_age_grace_ms", int(connections.max_connection_age_grace_s * ms)),
    ]
    # gRPC reads these as "never" only when absent (or INT_MAX): 0 would close at once.
    if connections.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(connections.max_connection_idle_s * ms)))
    if connections.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(connections.max_connection_age_s * ms)))
    return options


async def first_message(context: grpc.aio.ServicerContext, timeout_s: float) -> Any:
    """The request message of a unary call read as a stream: DEADLINE_EXCEEDED when it does not
    arrive within ``timeout_s``, INVALID_ARGUMENT when the call ends without one."""
    try:
        async with asyncio.timeout(timeout_s):
            request = await context.read()
    except TimeoutError:
        error: ServingError = DeadlineExceeded(
            f"no request message within {timeout_s * 1e3:.0f} ms of the call's start "
            "(server.connections.first_message_timeout_ms)"
        )
        await abort_with(context, error)
    if request is grpc.aio.EOF:
        await abort_with(context, InvalidArgument.single("(request)", "the call ended without a message"))
    return request


class FirstMessageGuard(grpc.aio.ServerInterceptor):
    """Serves every unary-request method as a request stream whose one message must arrive within
    ``first_message_timeout_ms``.

    grpc.aio reads a unary call's request before any handler (or authentication, which the next
    interceptor applies once the message is there) runs, and waits for it until the caller's own
    deadline: a client that opens calls and never sends their message holds them, and the
    memory behind them, for as long as it likes. Read as a stream, the handler runs when the call
    opens and can stop waiting. It goes first, so it sees the handler every other interceptor built.
    """

    def __init__(self, timeout_s: float, calls: OpenCalls | None = None) -> None:
        self.timeout_s = timeout_s
        self.calls = calls if calls is not None else OpenCalls()
        """Unary calls open now, from their handler's start to their end."""
        self.stalled = 0
        """Calls ended because their request message did not arrive in time."""
        self.waiting = 0
        """Calls open now whose request message has not arrived yet."""
        self._bounded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming requests are read by their servicer, as it chooses
        method = handler_call_details.method
        cached = self._bounded.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._bound(handler))
            self._bounded[method] = cached
        return cached[1]

    def _bound(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behaviour = handler.unary_unary
        timeout_s, calls = self.timeout_s, self.calls

        async def bounded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            calls.count += 1
            try:
                self.waiting += 1
                try:
                    request = await first_message(context, timeout_s)
                except grpc.aio.AbortError:
                    self.stalled += 1
                    raise
                finally:
                    self.waiting -= 1
                return await behaviour(request, context)
            finally:
                calls.count -= 1

        return grpc.stream_unary_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
