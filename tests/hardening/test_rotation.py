"""Rotating secrets without a restart: bearer tokens and TLS certificates are re-read on SIGHUP
(``UniRankServer.reload_secrets``); a file that cannot be used leaves the current ones in force."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest
from unirank_bench.servers import serving

from unirank.client import AsyncRecommenderClient, UniRankError
from unirank.server.security import SecurityError

from ..conftest import PROFILES, profile_with, running_server
from .certs import make_pki

OLD_TOKEN = "tok-rotation-old-0a1b2c3d4e5f"
NEW_TOKEN = "tok-rotation-new-9f8e7d6c5b4a"


async def _code(client: AsyncRecommenderClient) -> str:
    try:
        await client.search("space", timeout=10)
    except UniRankError as error:
        return error.code
    return "OK"


async def _code_with(address: str, token: str, **kwargs: object) -> str:
    async with AsyncRecommenderClient(address, bearer_token=token, timeout=10, **kwargs) as client:
        return await _code(client)


async def test_tokens_rotate_on_reload_and_a_bad_file_keeps_the_old_ones(
    artifact_dir: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"app:{OLD_TOKEN}\n")
    profile = profile_with(security={"auth": "bearer", "tokens_file": str(tokens)})
    async with running_server(profile, artifact_dir) as server:
        address = server.address
        assert await _code_with(address, OLD_TOKEN) == "OK"
        assert await _code_with(address, NEW_TOKEN) == "UNAUTHENTICATED"

        tokens.write_text(f"app:{NEW_TOKEN}\n")
        assert server.reload_secrets() == ["tokens"]
        assert await _code_with(address, NEW_TOKEN) == "OK"
        assert await _code_with(address, OLD_TOKEN) == "UNAUTHENTICATED"

        # A half-written or malformed file is refused whole; the tokens in force stay in force.
        tokens.write_text("app:xq7z\n")
        with pytest.raises(SecurityError, match="shorter than") as refused:
            server.reload_secrets()
        assert "xq7z" not in str(refused.value)  # the error names the token, never shows it
        tokens.unlink()
        with pytest.raises(SecurityError, match="cannot read"):
            server.reload_secrets()
        assert await _code_with(address, NEW_TOKEN) == "OK"
        assert server.auth is not None and server.auth.rotations == 1


async def test_tls_certificates_rotate_for_new_connections(artifact_dir: Path, tmp_path: Path) -> None:
    first, second = make_pki(tmp_path / "first"), make_pki(tmp_path / "second")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.crt", live / "server.key"
    shutil.copy(first.server.cert, cert)
    shutil.copy(first.server.key, key)
    profile = profile_with(security={"tls_cert_file": str(cert), "tls_key_file": str(key)})

    def trusting(pki_ca: Path) -> AsyncRecommenderClient:
        return AsyncRecommenderClient(address, root_certificates=pki_ca.read_bytes(), timeout=10)

    async with running_server(profile, artifact_dir) as server:
        address = server.address
        async with trusting(first.ca.cert) as old_trust:
            assert await _code(old_trust) == "OK"
            # The certificate files are replaced (a cert-manager renewal) and the server told.
            shutil.copy(second.server.cert, cert)
            shutil.copy(second.server.key, key)
            assert server.reload_secrets() == ["tls"]
            # An open connection keeps the certificate it was made with ...
            assert await _code(old_trust) == "OK"
        # ... new connections get the new one: trusted by the new CA only.
        async with trusting(second.ca.cert) as new_trust:
            assert await _code(new_trust) == "OK"
        async with trusting(first.ca.cert) as stale:
            assert await _code(stale) == "UNAVAILABLE"
        # A key file that is not PEM is refused; the current certificate keeps serving.
        key.write_text("not a key\n")
        with pytest.raises(SecurityError, match="tls_key_file"):
            server.reload_secrets()
        async with trusting(second.ca.cert) as still:
            assert await _code(still) == "OK"


@pytest.mark.timeout(120)
async def test_sighup_rotates_tokens_of_a_running_unirank_serve(artifact_dir: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"app:{OLD_TOKEN}\n")
    profile = tmp_path / "profile.toml"
    profile.write_text(
        (PROFILES / "cpu-realtime.toml").read_text()
        + f'\n[security]\nauth = "bearer"\ntokens_file = "{tokens}"\n'
    )
    async with serving(profile, artifact_dir) as served:
        assert await _code_with(served.address, OLD_TOKEN) in {"OK"}
        tokens.write_text(f"app:{NEW_TOKEN}\n")
        os.kill(served.pid, signal.SIGHUP)
        async with asyncio.timeout(30):
            while not any("re-read tokens" in line for line in served.output):
                await asyncio.sleep(0.05)
        assert await _code_with(served.address, NEW_TOKEN) == "OK"
        assert await _code_with(served.address, OLD_TOKEN) == "UNAUTHENTICATED"
    output = "".join(served.output)
    assert OLD_TOKEN not in output and NEW_TOKEN not in output
