"""TLS, mutual TLS and bearer tokens through real servers, with certificates made in the test."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.server.app import UniRankServer
from unirank.server.config import SecuritySection
from unirank.server.errors import Unauthenticated
from unirank.server.security import Authenticator, SecurityError, load_tokens, parse_tokens
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

from ..conftest import TASK_NAMES, profile_with, running_server
from .certs import Pki, make_pki

# Long enough for the server's 16-character floor; distinctive enough to grep logs for.
SEARCH_TOKEN = "tok-search-only-5f0c2a9e41d8"
ADMIN_TOKEN = "tok-admin-everything-8b7d1e33"
BATCH_TOKEN = "tok-batch-for-search-77aa01c9"
ALL_TOKENS = (SEARCH_TOKEN, ADMIN_TOKEN, BATCH_TOKEN)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _secure(pki: Pki, **security: Any) -> Any:
    base = {"tls_cert_file": str(pki.server.cert), "tls_key_file": str(pki.server.key)}
    return profile_with(
        security={**base, **security},
        tasks={name: {"timeout_ms": 10_000} for name in TASK_NAMES},
    )


def _mtls(pki: Pki, client: Any = None) -> grpc.ChannelCredentials:
    pair = client if client is not None else pki.client
    key, chain = pair.read()
    return grpc.ssl_channel_credentials(pki.ca.cert.read_bytes(), private_key=key, certificate_chain=chain)


async def _fails(client: AsyncRecommenderClient, call: Any = None) -> UniRankError:
    with pytest.raises(UniRankError) as error:
        await (call(client) if call is not None else client.search("space", timeout=5))
    return error.value


async def test_tls_serves_trusting_clients_and_refuses_the_rest(pki: Pki, artifact_dir: Path) -> None:
    async with running_server(_secure(pki), artifact_dir) as server:
        async with AsyncRecommenderClient(
            server.address, root_certificates=pki.ca.cert.read_bytes(), timeout=5
        ) as client:
            ranking = await client.search("space")
            assert ranking.items or ranking.fallback
            assert await client.health() == "SERVING"
        async with AsyncRecommenderClient(server.address, timeout=5) as plaintext:
            assert (await _fails(plaintext)).code == "UNAVAILABLE"
        # A client that trusts another CA does not accept the server's certificate.
        async with AsyncRecommenderClient(
            server.address, root_certificates=pki.rogue_ca.cert.read_bytes(), timeout=5
        ) as wrong_ca:
            assert (await _fails(wrong_ca)).code == "UNAVAILABLE"


async def test_mutual_tls_and_bearer_tokens(
    pki: Pki, artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# name:token\nsearch-app:{SEARCH_TOKEN}\nbatch-app:{BATCH_TOKEN}\n")
    monkeypatch.setenv("UNIRANK_TEST_TOKENS", f"admin:{ADMIN_TOKEN}")
    profile = _secure(
        pki,
        client_ca_file=str(pki.ca.cert),
        require_client_cert=True,
        auth="bearer",
        tokens_file=str(tokens),
        tokens_env="UNIRANK_TEST_TOKENS",
        grants={
            "search-app": {"methods": ["Recommend"], "tasks": ["search"]},
            "batch-app": {"tasks": ["search"]},
        },
    )
    caplog.set_level(logging.DEBUG)
    async with running_server(profile, artifact_dir) as server:
        target = server.address

        def client(token: str | None = None, creds: grpc.ChannelCredentials | None = None) -> Any:
            return AsyncRecommenderClient(
                target, credentials=creds or _mtls(pki), bearer_token=token, timeout=5
            )

        # Transport: no client certificate, or one from another CA, fails the handshake.
        async with AsyncRecommenderClient(
            target, root_certificates=pki.ca.cert.read_bytes(), bearer_token=ADMIN_TOKEN, timeout=5
        ) as no_cert:
            assert (await _fails(no_cert)).code == "UNAVAILABLE"
        async with client(ADMIN_TOKEN, _mtls(pki, pki.rogue_client)) as rogue:
            assert (await _fails(rogue)).code == "UNAVAILABLE"

        # Authentication: missing, malformed or unknown tokens.
        async with client() as anonymous:
            missing = await _fails(anonymous)
            assert await anonymous.health() == "SERVING"  # health stays open for probes
            stats = await _fails(anonymous, lambda c: c.model_info())
        async with client(SEARCH_TOKEN[:-1] + "X") as guessing:
            wrong = await _fails(guessing)
        async with AsyncRecommenderClient(
            target, credentials=_mtls(pki), metadata=[("authorization", f"Basic {ADMIN_TOKEN}")], timeout=5
        ) as basic:
            malformed = await _fails(basic)
        for error in (missing, stats, wrong, malformed):
            assert (error.code, error.reason) == ("UNAUTHENTICATED", "UNAUTHENTICATED"), error
            assert not any(token in error.message for token in ALL_TOKENS)

        # Authorisation: grants by method and by use-case.
        async with client(SEARCH_TOKEN) as search_app:
            assert (await search_app.search("space")).profile
            category = await _fails(search_app, lambda c: c.category("c1"))
            info = await _fails(search_app, lambda c: c.model_info())
        async with client(BATCH_TOKEN) as batch_app:
            from unirank.client import Category, RecommendationRequest, Search

            ok = await batch_app.recommend_batch([RecommendationRequest(Search("space"))] * 2)
            assert len(ok) == 2
            mixed = await _fails(
                batch_app,
                lambda c: c.recommend_batch(
                    [RecommendationRequest(Search("space")), RecommendationRequest(Category("c1"))]
                ),
            )
            assert (await batch_app.model_info()).model_version
        for error in (category, info, mixed):
            assert (error.code, error.reason) == ("PERMISSION_DENIED", "PERMISSION_DENIED"), error
        assert "category" in category.message and "GetModelInfo" in info.message

        # A token without a grant may do everything.
        async with client(ADMIN_TOKEN) as admin:
            assert (await admin.category("c1")).profile
            assert (await admin.model_info()).model_version

    log_text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "search-app" in log_text  # token names are logged at start ...
    assert not any(token in log_text for token in ALL_TOKENS)  # ... the tokens never are


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


async def _reflect(channel: grpc.aio.Channel, metadata: list[tuple[str, str]]) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(metadata=metadata, timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    names: list[str] = []
    async for response in call:
        names += [s.name for s in response.list_services_response.service]
    return names


async def test_health_and_reflection_open_or_closed_by_config(
    artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIRANK_TEST_TOKENS", f"admin:{ADMIN_TOKEN}")
    closed = profile_with(
        security={"auth": "bearer", "tokens_env": "UNIRANK_TEST_TOKENS", "health_requires_auth": True}
    )
    async with running_server(closed, artifact_dir) as server:
        async with AsyncRecommenderClient(server.address, timeout=5) as anonymous:
            with pytest.raises(UniRankError) as health:
                await anonymous.health()
        async with AsyncRecommenderClient(server.address, bearer_token=ADMIN_TOKEN, timeout=5) as admin:
            assert await admin.health() == "SERVING"
        async with grpc.aio.insecure_channel(server.address) as channel:
            stats = pb_grpc.RecommenderServiceStub(channel).GetServingStats
            with pytest.raises(grpc.aio.AioRpcError) as anonymous_stats:
                await stats(pb.GetServingStatsRequest(), timeout=5)
            admin_stats = await stats(pb.GetServingStatsRequest(), timeout=5, metadata=[_bearer(ADMIN_TOKEN)])
            assert admin_stats.profile
            with pytest.raises(grpc.aio.AioRpcError) as reflection:
                await _reflect(channel, [])
            services = await _reflect(channel, [_bearer(ADMIN_TOKEN)])
    assert health.value.code == "UNAUTHENTICATED"
    assert anonymous_stats.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reflection.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "unirank.v1.RecommenderService" in services

    hidden = profile_with(
        server={"reflection": False},
        security={"auth": "bearer", "tokens_env": "UNIRANK_TEST_TOKENS", "reflection_requires_auth": False},
    )
    async with (
        running_server(hidden, artifact_dir) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await _reflect(channel, [_bearer(ADMIN_TOKEN)])
    assert absent.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_unusable_certificates_or_tokens_stop_the_start_before_the_artifact(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNIRANK_NO_SUCH_VARIABLE", raising=False)
    not_pem = tmp_path / "server.crt"
    not_pem.write_text("not a certificate")
    cases = {
        "tls_cert_file": {"tls_cert_file": str(tmp_path / "missing.crt"), "tls_key_file": str(not_pem)},
        "not a PEM": {"tls_cert_file": str(not_pem), "tls_key_file": str(not_pem)},
        "UNIRANK_NO_SUCH_VARIABLE": {"auth": "bearer", "tokens_env": "UNIRANK_NO_SUCH_VARIABLE"},
    }
    for expected, security in cases.items():
        server = UniRankServer(profile_with(security=security), tmp_path / "no-artifact-needed", port=0)
        with pytest.raises(SecurityError, match=expected):
            await server.start()


def test_tokens_are_parsed_strictly_and_errors_never_show_them(tmp_path: Path) -> None:
    assert parse_tokens("# comment\na:0123456789abcdef\n\nb:0123456789abcdeg, c:0123456789abcdeh", "t") == [
        ("a", "0123456789abcdef"),
        ("b", "0123456789abcdeg"),
        ("c", "0123456789abcdeh"),
    ]
    for text, problem in (
        ("just-a-token-without-a-name", "not NAME:TOKEN"),
        ("short:abc123", "shorter than 16"),
        ("a:0123456789abcdef\na:0123456789abcdeg", "more than once"),
        ("a:0123456789abcdef\nb:0123456789abcdef", "share one token"),
    ):
        file = tmp_path / "tokens"
        file.write_text(text)
        with pytest.raises(SecurityError, match=problem) as error:
            load_tokens(SecuritySection(auth="bearer", tokens_file=str(file)), {})
        assert "0123456789abcde" not in str(error.value) and "abc123" not in str(error.value)
    section = SecuritySection(auth="bearer", tokens_env="T", grants={"nobody": {}})
    with pytest.raises(SecurityError, match="no token named"):
        Authenticator.create(section, {"T": "a:0123456789abcdef"})


def test_every_token_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = ",".join(f"t{i}:token-number-{i:04d}-xxxxxxxx" for i in range(5))
    auth = Authenticator.create(SecuritySection(auth="bearer", tokens_env="T"), {"T": entries})
    assert auth is not None
    calls = 0
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        nonlocal calls
        calls += 1
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented, expected in (
        ("token-number-0000-xxxxxxxx", "t0"),
        ("token-number-0004-xxxxxxxx", "t4"),
        ("nope-nope-nope-nope", None),
    ):
        calls = 0
        try:
            name: str | None = auth.authenticate([("authorization", f"Bearer {presented}")]).name
        except Unauthenticated:
            name = None
        assert (name, calls) == (expected, 5)  # every token compared: no early exit on a match


async def test_the_cli_speaks_mutual_tls_with_client_certificate_flags(
    pki: Pki, artifact_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unirank.client.cli import main

    profile = _secure(pki, client_ca_file=str(pki.ca.cert), require_client_cert=True)
    async with running_server(profile, artifact_dir) as server:
        base = ["recommend", "--target", server.address, "--ca-cert", str(pki.ca.cert), "--timeout", "10"]
        mtls = ["--client-cert", str(pki.client.cert), "--client-key", str(pki.client.key)]
        with_cert = await asyncio.to_thread(main, [*base, *mtls, "search", "--query", "space", "--json"])
        answered = capsys.readouterr().out
        without = await asyncio.to_thread(main, [*base, "search", "--query", "space"])
        refused = capsys.readouterr()
        with pytest.raises(SystemExit, match="go together"):
            main([*base, "--client-cert", str(pki.client.cert), "search", "--query", "space"])
    assert with_cert == 0 and json.loads(answered)["task_type"] == "search", answered
    assert without != 0 and "UNAVAILABLE" in refused.out + refused.err
