"""The one exception every client call raises on a non-OK gRPC status, with rich details decoded."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc

# Trailing-metadata key that carries a serialized google.rpc.Status (the "rich error model").
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class UniRankError(Exception):
    """A UniRank call ended with a non-OK gRPC status.

    ``field_violations``, ``retry_after_s`` and ``reason`` come from the ``google.rpc`` details
    the server attached; they are decoded when ``googleapis-common-protos`` is importable
    (``pip install 'unirank-client[rich-errors]'``) and empty otherwise.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field_violations: Iterable[tuple[str, str]] = (),
        retry_after_s: float | None = None,
        reason: str = "",
    ) -> None:
        self.code = code
        """gRPC status code name, e.g. ``"INVALID_ARGUMENT"``."""
        self.message = message
        self.field_violations = list(field_violations)
        """``(field, description)`` pairs from ``google.rpc.BadRequest``."""
        self.retry_after_s = retry_after_s
        """Seconds to wait before retrying, from ``google.rpc.RetryInfo``; None when not given."""
        self.reason = reason
        """Machine-readable cause from ``google.rpc.ErrorInfo``, e.g. ``"MODEL_NOT_READY"``."""
        super().__init__(self.__str__())

    @property
    def status_code(self) -> grpc.StatusCode | None:
        """The code as a ``grpc.StatusCode``; None for a name this grpcio does not know."""
        return getattr(grpc.StatusCode, self.code, None)

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}" if self.message else self.code
        if self.field_violations:
            text += " (" + "; ".join(f"{field}: {why}" for field, why in self.field_violations) + ")"
        if self.retry_after_s is not None:
            text += f" [retry after {self.retry_after_s:g} s]"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays ``args`` (the text) into __init__, which wants the parts;
        # without this an error could not cross a process boundary (multiprocessing, executors).
        details = {
            "field_violations": self.field_violations,
            "retry_after_s": self.retry_after_s,
            "reason": self.reason,
        }
        return (_rebuild_error, (self.code, self.message, details))

    def __repr__(self) -> str:
        return (
            f"UniRankError(code={self.code!r}, message={self.message!r}, "
            f"field_violations={self.field_violations!r}, retry_after_s={self.retry_after_s!r}, "
            f"reason={self.reason!r})"
        )


def _rebuild_error(code: str, message: str, details: dict[str, Any]) -> UniRankError:
    return UniRankError(code, message, **details)


def _status_details(trailing_metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY:
            return value if isinstance(value, bytes) else None
    return None


def decode_status_details(serialized_status: bytes) -> tuple[list[tuple[str, str]], float | None, str]:
    """``(field_violations, retry_after_s, reason)`` from a serialized ``google.rpc.Status``.

    Everything is optional here: without googleapis-common-protos, or with a detail that does
    not parse, the caller still gets the status code and message, just no details.
    """
    try:
        from google.protobuf.message import DecodeError
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return [], None, ""
    try:
        status = status_pb2.Status.FromString(serialized_status)
    except DecodeError:
        return [], None, ""
    violations: list[tuple[str, str]] = []
    retry_after_s: float | None = None
    reason = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry_after_s = retry_info.retry_delay.seconds + retry_info.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            reason = error_info.reason
    return violations, retry_after_s, reason


def error_from_rpc(error: grpc.RpcError) -> UniRankError:
    """Translate a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    # A grpc.RpcError raised by a call is also a grpc.Call; getattr keeps odd ones (a bare
    # RpcError from an interceptor) from turning into an AttributeError here.
    code = getattr(error, "code", lambda: grpc.StatusCode.UNKNOWN)()
    message = getattr(error, "details", lambda: str(error))() or ""
    trailing = getattr(error, "trailing_metadata", lambda: None)()
    serialized = _status_details(trailing)
    violations, retry_after_s, reason = decode_status_details(serialized) if serialized else ([], None, "")
    code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return UniRankError(
        code_name, message, field_violations=violations, retry_after_s=retry_after_s, reason=reason
    )


def _code_name(number: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return str(code.name)
    return str(number)


def error_from_member_status(status: Any) -> UniRankError | None:
    """The error of one RecommendBatch member (a ``unirank.v1.MemberStatus``); None for OK."""
    if not status.code:
        return None
    retry_after_s = None
    if status.HasField("retry_delay"):
        retry_after_s = status.retry_delay.seconds + status.retry_delay.nanos / 1e9
    return UniRankError(
        _code_name(status.code), status.message, retry_after_s=retry_after_s, reason=status.reason
    )


class BatchMemberError(UniRankError):
    """Some members of a RecommendBatch were not answered while the others were.

    ``results`` holds, in request order, each member's ranking or its own :class:`UniRankError`
    (retry those, e.g. after their ``retry_after_s``); the code, reason and retry delay are the
    first failed member's. ``recommend_batch_outcomes`` returns ``results`` instead of raising.
    """

    def __init__(self, results: Sequence[Any]) -> None:
        self.results = list(results)
        failed = [(i, r) for i, r in enumerate(self.results) if isinstance(r, UniRankError)]
        index, first = failed[0]
        super().__init__(
            first.code,
            f"{len(failed)} of {len(self.results)} batch members failed; requests[{index}]: {first.message}",
            retry_after_s=first.retry_after_s,
            reason=first.reason,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchMemberError, (self.results,))
