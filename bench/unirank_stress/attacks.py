"""Section 5 of the stress report, access control: TLS, mutual TLS, bearer tokens, grants,
reflection and secret rotation, tried against real servers; and whether a token ever reached a log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import TASK_NAMES, profile_with, running_server
from tests.hardening.certs import Pki, make_pki
from unirank.client import AsyncRecommenderClient
from unirank.server.security import SecurityError
from unirank_stress.common import Capture, error_of, md_table

_TOKENS = {"search-app": "stress-search-token-71d2c0", "admin": "stress-admin-token-9e44aa"}
_ROTATED_TOKEN = "stress-admin-rotated-4c1d9e"


async def _reflect(address: str, creds: grpc.ChannelCredentials | None, token: str | None) -> str:
    channel = grpc.aio.secure_channel(address, creds) if creds else grpc.aio.insecure_channel(address)
    async with channel:
        metadata = [("authorization", f"Bearer {token}")] if token else []
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            metadata=metadata, timeout=5
        )
        try:
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            await call.done_writing()
            names = [s.name for r in [await call.read()] for s in r.list_services_response.service]
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {(error.details() or '')[:80]}"
    return f"OK: {len(names)} services listed"


async def attacks(artifact: Path, workdir: Path) -> list[str]:
    pki: Pki = make_pki(workdir / "pki")
    ca = pki.ca.cert.read_bytes()
    tokens = workdir / "tokens"
    tokens.write_text("".join(f"{name}:{token}\n" for name, token in _TOKENS.items()))
    relaxed = {name: {"timeout_ms": 10_000} for name in TASK_NAMES}
    profile = profile_with(
        tasks=relaxed,
        security={
            "tls_cert_file": str(pki.server.cert),
            "tls_key_file": str(pki.server.key),
            "client_ca_file": str(pki.ca.cert),
            "require_client_cert": True,
            "auth": "bearer",
            "tokens_file": str(tokens),
            "grants": {"search-app": {"methods": ["Recommend"], "tasks": ["search"]}},
        },
    )

    def mtls(pair: Any = None) -> grpc.ChannelCredentials:
        key, chain = (pair or pki.client).read()
        return grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=chain)

    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    rows: list[list[object]] = []
    try:
        async with running_server(profile, artifact) as server:
            address = server.address

            async def attempt(
                label: str, call: Callable[[AsyncRecommenderClient], Any], **client: Any
            ) -> None:
                async with AsyncRecommenderClient(address, timeout=5, **client) as c:
                    rows.append([label, await error_of(lambda: call(c))])

            search = lambda c: c.search("space")  # noqa: E731
            await attempt("plaintext client to a TLS server", search, bearer_token=_TOKENS["admin"])
            await attempt(
                "client trusting another CA", search, root_certificates=pki.rogue_ca.cert.read_bytes()
            )
            await attempt("mutual TLS: no client certificate", search, root_certificates=ca)
            await attempt(
                "mutual TLS: client certificate of another CA",
                search,
                credentials=mtls(pki.rogue_client),
                bearer_token=_TOKENS["admin"],
            )
            await attempt("no bearer token", search, credentials=mtls())
            await attempt("unknown token", search, credentials=mtls(), bearer_token="guess-guess-guess-guess")
            await attempt(
                "a valid token under the Basic scheme",
                search,
                credentials=mtls(),
                metadata=[("authorization", f"Basic {_TOKENS['admin']}")],
            )
            await attempt(
                "search-only token asks for a category row",
                lambda c: c.category("drama"),
                credentials=mtls(),
                bearer_token=_TOKENS["search-app"],
            )
            await attempt(
                "Recommend-only token asks for GetModelInfo",
                lambda c: c.model_info(),
                credentials=mtls(),
                bearer_token=_TOKENS["search-app"],
            )
            await attempt(
                "search-only token, search", search, credentials=mtls(), bearer_token=_TOKENS["search-app"]
            )
            await attempt("health check without a token (open)", lambda c: c.health(), credentials=mtls())
            rows.append(["reflection without a token", await _reflect(address, mtls(), None)])
            rows.append(["reflection with a token", await _reflect(address, mtls(), _TOKENS["admin"])])
            # Rotation: the tokens file is rewritten with a new admin token and the server told
            # (what SIGHUP does in `unirank serve`).
            rotated = _ROTATED_TOKEN
            tokens.write_text(f"admin:{rotated}\nsearch-app:{_TOKENS['search-app']}\n")
            server.reload_secrets()
            await attempt(
                "old admin token after rotation", search, credentials=mtls(), bearer_token=_TOKENS["admin"]
            )
            await attempt("new admin token after rotation", search, credentials=mtls(), bearer_token=rotated)
            tokens.write_text("admin:too-short\n")
            try:
                server.reload_secrets()
                outcome = "accepted"
            except SecurityError as error:
                outcome = f"refused: {error}"
            await attempt(
                f"rotation to a malformed tokens file ({outcome}); then the rotated token",
                search,
                credentials=mtls(),
                bearer_token=rotated,
            )
            tokens.write_text("".join(f"{name}:{token}\n" for name, token in _TOKENS.items()))
        closed = profile_with(
            tasks=relaxed,
            security={"auth": "bearer", "tokens_file": str(tokens), "health_requires_auth": True},
        )
        async with (
            running_server(closed, artifact) as server,
            AsyncRecommenderClient(server.address, timeout=5) as anonymous,
        ):
            rows.append(["health check without a token (closed by config)", await error_of(anonymous.health)])
        hidden = profile_with(tasks=relaxed, server={"reflection": False})
        async with running_server(hidden, artifact) as server:
            rows.append(["reflection disabled by config", await _reflect(server.address, None, None)])
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    leaked = sum(
        any(token in line for token in (*_TOKENS.values(), _ROTATED_TOKEN)) for line in capture.lines
    )
    return [
        "## 5. Access control",
        "",
        "One server with TLS, mutual TLS required, bearer tokens from a file and a grant limiting "
        "`search-app` to `Recommend` for `search` (certificates made on the spot by "
        "`tests/hardening/certs.py`: a CA, a server certificate for 127.0.0.1, a client certificate, "
        "and a rogue CA with its own client), then one with health closed and one without reflection:",
        "",
        *md_table(["attempt", "observed"], rows),
        f"Log lines written meanwhile (every logger at DEBUG): {len(capture.lines):,}; lines containing a "
        f"token: **{leaked}**. Tokens are compared with `hmac.compare_digest` over SHA-256 digests of "
        "every configured token, with no early exit (`tests/hardening/test_security.py` counts the "
        "comparisons); they are never in the profile, in logs or in error messages (only their names). "
        "Tokens and certificates are re-read on SIGHUP (`UniRankServer.reload_secrets`; "
        "`tests/hardening/test_rotation.py`): new connections get the new certificate, open ones keep "
        "theirs, and a file that cannot be used is refused whole while the current secrets stay in force.",
        "",
    ]
