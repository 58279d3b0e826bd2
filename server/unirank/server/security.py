"""Transport security and access control of one server: TLS / mutual TLS credentials and bearer tokens.

Tokens never appear in the profile (it names a file or an environment variable), in logs, in
telemetry or in error messages: only a token's *name* does. A presented token is compared with
every configured one in constant time (``hmac.compare_digest`` over SHA-256 digests, no early
exit), so neither timing nor length tells a caller how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from unirank.artifact.tasks import TASKS
from unirank.server.config import SecuritySection
from unirank.server.errors import PermissionDenied, Unauthenticated
from unirank.v1 import recommender_pb2 as pb

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused at start: a short secret can be guessed."""

_SERVICE_PREFIX = f"/{pb.DESCRIPTOR.services_by_name['RecommenderService'].full_name}/"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_REFLECTION_PREFIX = "/grpc.reflection."
_TASK_OF_ONEOF = {spec.context_field: spec.name for spec in TASKS}
"""The request oneof field of each use-case -> the task name grants use."""


class SecurityError(Exception):
    """A certificate, key or token source named by ``[security]`` is missing or unusable."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the name of its token and what it may do.

    ``methods``: the RPC names it may call (None: every method, a token without a grant);
    ``tasks``: the use-cases it may rank for (empty: every one).
    """

    name: str
    methods: frozenset[str] | None = None
    tasks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Credential:
    digest: bytes
    principal: Principal


# -- TLS ------------------------------------------------------------------------------------


def _read_pem(path: str, what: str) -> bytes:
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise SecurityError(f"security.{what}: cannot read {file}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"security.{what}: {file} is not a PEM file")
    return data


class TlsCredentials:
    """The server's TLS (and with a client CA, mutual TLS) credentials, rotatable while serving.

    gRPC asks :meth:`_fetch` for a new certificate configuration at each handshake; it hands over
    one only after :meth:`reload` read and checked new files, so connections made after a
    rotation (SIGHUP) present the new certificate and trust the new client CA, while open
    connections keep theirs. Files that cannot be read leave the current configuration in place.
    """

    def __init__(self, section: SecuritySection) -> None:
        self._section = section
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.rotations = 0
        initial = self._configuration()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=section.require_client_cert
        )

    @classmethod
    def create(cls, section: SecuritySection) -> TlsCredentials | None:
        """None where the profile serves plaintext."""
        return cls(section) if section.tls_cert_file else None

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        section = self._section
        chain = _read_pem(section.tls_cert_file, "tls_cert_file")
        key = _read_pem(section.tls_key_file, "tls_key_file")
        client_ca = _read_pem(section.client_ca_file, "client_ca_file") if section.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)

    def reload(self) -> None:
        """Read the certificate files again; the next handshakes use them. SecurityError if unusable."""
        self._pending = self._configuration()
        self.rotations += 1
        log.info("TLS certificates re-read from %s", self._section.tls_cert_file)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending


# -- tokens ---------------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str) -> list[tuple[str, str]]:
    """``NAME:TOKEN`` entries, one per line or separated by commas; ``#`` starts a comment line.

    Errors name the source and the entry's position, never the token.
    """
    entries: list[tuple[str, str]] = []
    position = 0
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for raw in line.split(","):
            entry = raw.strip()
            if not entry:
                continue
            position += 1
            name, sep, token = entry.partition(":")
            name, token = name.strip(), token.strip()
            if not sep or not name or not token:
                raise SecurityError(f"{source}: entry {position} is not NAME:TOKEN")
            if len(token) < MIN_TOKEN_CHARS:
                raise SecurityError(f"{source}: token {name!r} is shorter than {MIN_TOKEN_CHARS} characters")
            entries.append((name, token))
    return entries


def load_tokens(section: SecuritySection, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every configured ``(name, token)``: the tokens file's, then the environment variable's."""
    entries: list[tuple[str, str]] = []
    if section.tokens_file:
        file = Path(section.tokens_file)
        try:
            text = file.read_text()
        except OSError as exc:
            raise SecurityError(f"security.tokens_file: cannot read {file}: {exc.strerror or exc}") from None
        entries += parse_tokens(text, f"security.tokens_file {file}")
    if section.tokens_env:
        if section.tokens_env not in environ:
            raise SecurityError(f"security.tokens_env: environment variable {section.tokens_env} is not set")
        entries += parse_tokens(environ[section.tokens_env], f"security.tokens_env ${section.tokens_env}")
    if not entries:
        raise SecurityError("security.auth = 'bearer' but the tokens file and variable hold no token")
    names = [name for name, _ in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SecurityError(f"security: token name(s) {repeated} appear more than once")
    if len({token for _, token in entries}) < len(entries):
        raise SecurityError("security: two token names share one token")
    return entries


def _credentials(section: SecuritySection, environ: Mapping[str, str]) -> list[_Credential]:
    tokens = load_tokens(section, environ)
    unknown = sorted(set(section.grants) - {name for name, _ in tokens})
    if unknown:
        raise SecurityError(f"security.grants: no token named {unknown}")
    credentials = []
    for name, token in tokens:
        grant = section.grants.get(name)
        principal = Principal(
            name,
            frozenset(grant.methods) if grant else None,
            frozenset(grant.tasks) if grant else frozenset(),
        )
        credentials.append(_Credential(_digest(token), principal))
    log.info(
        "bearer authentication: %d token(s) named %s",
        len(credentials),
        [c.principal.name for c in credentials],
    )
    return credentials


def requested_tasks(request: Any) -> set[str]:
    """The use-cases a request asks to rank for (none for messages that rank nothing)."""
    if isinstance(request, pb.RecommendRequest):
        task = _TASK_OF_ONEOF.get(request.context.WhichOneof("task") or "")
        return {task} if task is not None else set()
    if isinstance(request, pb.RecommendBatchRequest):
        return {t for r in request.requests if (t := _TASK_OF_ONEOF.get(r.context.WhichOneof("task") or ""))}
    return set()


class Authenticator:
    """Checks the bearer token of each call and what its principal may call.

    Build it with :meth:`create`; ``guards(method)`` says whether a method needs a token at all
    (health and reflection are open or closed by the profile; the UniRank service always is).
    """

    def __init__(self, credentials: Iterable[_Credential], section: SecuritySection) -> None:
        self._credentials = tuple(credentials)
        self._section = section
        self._health_requires_auth = section.health_requires_auth
        self._reflection_requires_auth = section.reflection_requires_auth
        self.rotations = 0

    @classmethod
    def create(cls, section: SecuritySection, environ: Mapping[str, str]) -> Authenticator | None:
        """None where the profile asks for no authentication."""
        if section.auth == "none":
            return None
        return cls(_credentials(section, environ), section)

    def reload(self, environ: Mapping[str, str]) -> None:
        """Read the tokens again (rotation): calls from now on are checked against the new set.

        Everything is checked before anything is swapped: a tokens file that cannot be read or
        parsed raises SecurityError and the current tokens stay in force.
        """
        self._credentials = tuple(_credentials(self._section, environ))
        self.rotations += 1

    def guards(self, method: str) -> bool:
        if method.startswith(_HEALTH_PREFIX):
            return self._health_requires_auth
        if method.startswith(_REFLECTION_PREFIX):
            return self._reflection_requires_auth
        return True

    def authenticate(self, metadata: Iterable[Any] | None) -> Principal:
        """The caller's principal, or Unauthenticated. The token itself is never echoed."""
        presented: str | None = None
        for item in metadata or ():
            key, value = item[0], item[1]
            if key == "authorization" and isinstance(value, str):
                presented = value
                break
        if presented is None:
            raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <token>'")
        scheme, _, token = presented.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <token>'")
        digest = _digest(token.strip())
        found: Principal | None = None
        for credential in self._credentials:  # no early exit: every call costs the same
            if hmac.compare_digest(digest, credential.digest) and found is None:
                found = credential.principal
        if found is None:
            raise Unauthenticated("invalid bearer token")
        return found

    @staticmethod
    def authorize_method(principal: Principal, method: str) -> None:
        if principal.methods is None or not method.startswith(_SERVICE_PREFIX):
            return  # health and reflection are guarded by authentication alone
        short = method.rsplit("/", 1)[-1]
        if short not in principal.methods:
            raise PermissionDenied(f"token {principal.name!r} may not call {short}")

    @staticmethod
    def authorize_tasks(principal: Principal, request: Any) -> None:
        if not principal.tasks:
            return
        refused = sorted(requested_tasks(request) - principal.tasks)
        if refused:
            raise PermissionDenied(
                f"token {principal.name!r} may not rank for {', '.join(refused)}; "
                f"it may rank for {', '.join(sorted(principal.tasks))}"
            )
