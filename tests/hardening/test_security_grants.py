"""Issue 13, finding 12: grants cover every method, client certificates are checked or the profile
is refused, callers are told no internal address or path, and a store outage logs a line per
interval, not per request."""

from __future__ import annotations

import datetime
import logging
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from unirank.artifact import load_artifact
from unirank.client import AsyncRecommenderClient, Event, UniRankError
from unirank.server.config import ProfileError
from unirank.server.telemetry.logs import ThrottledLog
from unirank.v1 import recommender_pb2 as pb
from unirank.v1 import recommender_pb2_grpc as pb_grpc

from ..conftest import profile_with, running_server
from .certs import Pair, Pki, make_pki

SEARCH_TOKEN = "tok-grant-search-3c1f9a7e52"
EVENTS_TOKEN = "tok-grant-events-91d0b6f4aa"
OPERATOR_TOKEN = "tok-grant-operator-0e8c27d5"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _code(call: Any) -> str:
    with pytest.raises(UniRankError) as caught:
        await call
    return caught.value.code


async def test_a_grant_allows_only_the_methods_it_lists(
    artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "UNIRANK_GRANT_TOKENS", f"search-app:{SEARCH_TOKEN},events-app:{EVENTS_TOKEN},ops:{OPERATOR_TOKEN}"
    )
    profile = profile_with(
        security={
            "auth": "bearer",
            "tokens_env": "UNIRANK_GRANT_TOKENS",
            "grants": {"search-app": {"tasks": ["search"]}, "events-app": {"methods": ["RecordEvents"]}},
        },
        tasks={"search": {"timeout_ms": 10_000}},
    )
    item = load_artifact(artifact_dir).catalog.items.key(1)
    async with running_server(profile, artifact_dir) as server:
        target = server.address
        async with AsyncRecommenderClient(target, bearer_token=SEARCH_TOKEN, timeout=5) as search_app:
            assert (await search_app.search("space")).profile
            assert (await search_app.model_info()).model_version
            # Not in a grant that lists no methods: writing any user's history, operational stats.
            assert await _code(search_app.record_events([Event("someone", item)])) == "PERMISSION_DENIED"
            assert await _code(search_app.category("c1")) == "PERMISSION_DENIED"
        async with AsyncRecommenderClient(target, bearer_token=EVENTS_TOKEN, timeout=5) as events_app:
            assert (await events_app.record_events([Event("someone", item)])).accepted == 1
            assert await _code(events_app.search("space")) == "PERMISSION_DENIED"
        async with grpc.aio.insecure_channel(target) as channel:
            stats = pb_grpc.RecommenderServiceStub(channel).GetServingStats
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stats(
                    pb.GetServingStatsRequest(), metadata=[("authorization", f"Bearer {SEARCH_TOKEN}")]
                )
            operator = await stats(
                pb.GetServingStatsRequest(), metadata=[("authorization", f"Bearer {OPERATOR_TOKEN}")]
            )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "GetServingStats" in (denied.value.details() or "")
    assert operator.profile  # a token without a grant is an operator's


def test_a_grant_of_no_method_and_a_client_ca_that_would_be_ignored_are_refused(pki: Pki) -> None:
    with pytest.raises(ProfileError, match="at least one method"):
        profile_with(security={"auth": "bearer", "tokens_env": "X", "grants": {"a": {"methods": []}}})
    tls = {"tls_cert_file": str(pki.server.cert), "tls_key_file": str(pki.server.key)}
    with pytest.raises(ProfileError, match="require_client_cert"):
        profile_with(security={**tls, "client_ca_file": str(pki.ca.cert)})


def _expired_client(pki: Pki, directory: Path) -> Pair:
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired-client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pair = Pair(directory / "expired.crt", directory / "expired.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair


async def test_with_a_client_ca_an_expired_or_foreign_certificate_fails_the_handshake(
    pki: Pki, artifact_dir: Path, tmp_path: Path
) -> None:
    profile = profile_with(
        security={
            "tls_cert_file": str(pki.server.cert),
            "tls_key_file": str(pki.server.key),
            "client_ca_file": str(pki.ca.cert),
            "require_client_cert": True,
        },
        tasks={"search": {"timeout_ms": 10_000}},
    )

    def credentials(pair: Pair) -> grpc.ChannelCredentials:
        key, chain = pair.read()
        return grpc.ssl_channel_credentials(
            pki.ca.cert.read_bytes(), private_key=key, certificate_chain=chain
        )

    async with running_server(profile, artifact_dir) as server:
        for pair, expected in (
            (pki.client, None),
            (pki.rogue_client, "UNAVAILABLE"),
            (_expired_client(pki, tmp_path), "UNAVAILABLE"),
        ):
            async with AsyncRecommenderClient(server.address, credentials=credentials(pair), timeout=5) as c:
                if expected is None:
                    assert (await c.search("space")).profile
                else:
                    assert await _code(c.search("space")) == expected


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_redis_outage_tells_callers_no_address_and_logs_a_line_per_interval(
    artifact_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("UNIRANK_REDIS_URL", raising=False)
    port = _closed_port()
    profile = profile_with(
        features={"store": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"},
        tasks={"notification": {"timeout_ms": 10_000}},
    )
    catalog = load_artifact(artifact_dir).catalog
    item, user = catalog.items.key(1), catalog.users.key(3)
    caplog.set_level(logging.WARNING, logger="unirank.server.pipeline")
    async with (
        running_server(profile, artifact_dir) as server,
        AsyncRecommenderClient(server.address, timeout=5) as client,
    ):
        with pytest.raises(UniRankError) as caught:
            await client.record_events([Event(user, item)])
        for _ in range(40):  # every request degrades to the history it sent ...
            assert (await client.notification(user, history_item_ids=[item])).items
    assert caught.value.code == "UNAVAILABLE"
    assert "127.0.0.1" not in caught.value.message and str(port) not in caught.value.message
    # ... and the outage is logged once (with the address, for the operator), not 40 times.
    reads = [r for r in caplog.records if "without fresh history" in r.getMessage()]
    assert len(reads) == 1 and str(port) in reads[0].getMessage()


def test_a_repeated_warning_is_written_once_per_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttled = ThrottledLog(
        logging.getLogger("unirank.test.throttle"), interval_s=10.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, logger="unirank.test.throttle")
    written = []
    for step in range(5_365):  # one a request, 13 s of them
        now[0] = step * 13.0 / 5_365
        written.append(throttled.warning("redis", "store down: %s", "refused"))
    assert sum(written) == 2
    assert throttled.warning("other", "another condition") is True  # keys are independent
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "store down: refused"
    assert messages[1].startswith("store down: refused (") and "more like it in the last 10 s" in messages[1]
    held = int(messages[1].split("(")[1].split()[0])
    assert held == sum(1 for step in range(5_365) if step * 13.0 / 5_365 < 10.0) - 1
