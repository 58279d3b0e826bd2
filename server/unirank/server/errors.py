"""One error hierarchy, one table mapping it to gRPC status codes.

Domain code raises these; the interceptor in :mod:`unirank.server.interceptors` turns them into
rich ``google.rpc.Status`` answers. Anything else that escapes a handler becomes INTERNAL with a
generic message (the details go to the log), never UNKNOWN.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "unirank.v1"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ServingError(Exception):
    """Base of every error the API answers deliberately."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation]) -> None:
        text = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {text}")
        self.violations = violations

    @classmethod
    def single(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class UnknownEntity(ServingError):
    """A well-formed id the artifact does not know, where the use-case's fallback is ``error``."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "UNKNOWN_ENTITY"


class TaskNotServed(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "TASK_NOT_SERVED"


class Overloaded(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"

    def __init__(self, message: str, retry_after_s: float = 0.05) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(ServingError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "DRAINING"

    def __init__(self, message: str = "server is shutting down", retry_after_s: float = 0.1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FeatureStoreUnavailable(ServingError):
    """RecordEvents could not write to the online feature store; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "FEATURE_STORE_UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(ServingError):
    """No bearer token, a malformed one, or one the server does not know (the token is never echoed)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(ServingError):
    """A known token asked for a method or a use-case its grant does not allow."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class RolloutRefused(ServingError):
    """An operator's rollout command that cannot be carried out now (rollouts off, none active, a
    use-case not in it or already decided, no new version, the gate refused it)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ROLLOUT_REFUSED"


class ModelUnavailable(ServingError):
    """The backend failed and the use-case's fallback is configured to fail the call."""

    code = grpc.StatusCode.INTERNAL
    reason = "MODEL_UNAVAILABLE"


def _concrete_errors(base: type[ServingError]) -> list[type[ServingError]]:
    found = []
    for cls in base.__subclasses__():
        found += [cls, *_concrete_errors(cls)]
    return found


ERROR_TABLE: dict[type[ServingError], grpc.StatusCode] = {
    cls: cls.code for cls in _concrete_errors(ServingError)
}
"""Every ServingError subclass and the code it answers with, read from the classes themselves
(``code`` is stated once, on the class); a test drives each row through a real server."""


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def code_of(error: ServingError) -> grpc.StatusCode:
    """The status code ``error`` answers with (the table's row for its class)."""
    return ERROR_TABLE.get(type(error), error.code)


def to_rpc_status(error: ServingError) -> status_pb2.Status:
    """The rich status for ``error``: ErrorInfo always, BadRequest / RetryInfo where they apply."""
    code = code_of(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    status.details.append(_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)))
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        status.details.append(_pack(bad_request))
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status
