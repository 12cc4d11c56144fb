"""Issue 7 security: API token on /asr and status pages, Origin allow-list, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import httpx
import pytest

from conftest import pace, run, running_server
from helpers import open_session
from whisperlivekit.client import stream

TOKEN = "s3cret-token-do-not-log"


@pytest.fixture(scope="module")
def token_server():
    with running_server("--pcm-input", "--protect-status", "--log-level", "debug", env={"WLK_API_TOKEN": TOKEN}) as server:
        yield server


def _first(url, **kwargs):
    async def go():
        ws, first, code = await open_session(url, **kwargs)
        await ws.close()
        return first, code, ws.close_reason
    return run(go())


def test_wrong_or_missing_token_is_closed_with_4401(token_server):
    for url in (token_server.ws_url, token_server.ws_url + "?token=wrong"):
        first, code, reason = _first(url)
        assert first is None and code == 4401 and reason == "Unauthorized"


def test_right_token_in_query_or_bearer_header_gets_config(token_server, speech_pcm):
    first, code, _ = _first(token_server.ws_url + f"?token={TOKEN}")
    assert first["type"] == "config", code
    pcm, _ = speech_pcm("arctic_a0007")
    result = run(stream(token_server.ws_url, pcm, pcm=True, speed=pace(4.0), headers={"Authorization": f"Bearer {TOKEN}"}))
    assert result.config is not None and result.ended_with_ready_to_stop


def test_protect_status_requires_the_token_on_status_pages(token_server):
    for path in ("/gpu-status", "/metrics", "/dashboard"):
        assert token_server.get(path).status_code == 401
        assert token_server.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert token_server.get(f"/metrics?token={TOKEN}").status_code == 200
    assert token_server.get("/health").status_code == 200  # probes stay open


def test_the_token_never_appears_in_the_server_log(token_server):
    _first(token_server.ws_url + f"?token={TOKEN}")
    token_server.get(f"/gpu-status?token={TOKEN}")
    assert TOKEN not in token_server.log()


def test_origin_allow_list():
    with running_server("--pcm-input", "--allowed-origins", "https://good.example") as server:
        first, code, reason = _first(server.ws_url, )
        assert first is None and code == 4403  # a list is set: no Origin is not allowed either
        first, code, reason = _first(server.ws_url, headers={"Origin": "https://evil.example"})
        assert first is None and code == 4403 and reason == "Origin not allowed"
        first, _, _ = _first(server.ws_url, headers={"Origin": "https://good.example"})
        assert first["type"] == "config"
        cors = server.get("/health", headers={"Origin": "https://good.example"})
        assert cors.headers.get("access-control-allow-origin") == "https://good.example"
        assert "access-control-allow-origin" not in server.get("/health", headers={"Origin": "https://evil.example"}).headers


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_wss_with_the_given_certificate(tmp_path, speech_pcm):
    cert, key = _self_signed(tmp_path)
    trusts_cert = ssl.create_default_context(cafile=str(cert))
    flags = ("--pcm-input", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    with running_server(*flags, ssl_context=trusts_cert) as server:
        assert server.base_url.startswith("https://") and server.get("/health").status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is not served
            httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
        pcm, _ = speech_pcm("arctic_a0007")
        result = run(stream(server.ws_url, pcm, pcm=True, speed=pace(4.0), ssl=trusts_cert))
        assert server.ws_url.startswith("wss://")
        assert result.config is not None and result.ended_with_ready_to_stop
