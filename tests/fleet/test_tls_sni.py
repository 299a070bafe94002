"""A discovered address over TLS: the client connects to the address but verifies the certificate
against the name and sends the name as SNI and Host (proxy.endpoints.endpoint_at), through the
one pool (proxy/h1.py). Real TLS on 127.0.0.1 with a throwaway certificate for the name only."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest

from proxy.endpoints import endpoint_at
from proxy.h1 import ConnectFailed, Endpoint, Limits, Pool, request_head
from proxy.upstreams import endpoint_of
from tests.fleet.harness import NAME

LIMITS = Limits(5.0, 5.0, 10.0)


@pytest.fixture
def cert_for_name(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}",
         "-addext", f"subjectAltName=DNS:{NAME}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_an_address_is_reached_with_the_names_sni_host_and_certificate(
    cert_for_name: tuple[Path, Path],
) -> None:
    cert, key = cert_for_name
    seen: dict[str, object] = {}
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen["sni"] = name

    server_ctx.sni_callback = sni  # type: ignore[assignment]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen["host"] = next(
            line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.startswith(b"Host:")
        )
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    pool = Pool()
    try:
        base = endpoint_of(f"https://{NAME}:{port}/v1")
        assert base.server_hostname == NAME
        trusting = ssl.create_default_context(cafile=str(cert))
        named = Endpoint(base.host, base.port, base.host_header, trusting, base.server_hostname)
        at = endpoint_at(named, "127.0.0.1", port)
        resp = await pool.request(at, LIMITS, request_head("GET", "/v1/models", at, [], b""), "GET")
        assert (resp.status, await resp.read()) == (200, b"ok")
        resp.release()
        assert seen == {"sni": NAME, "host": f"{NAME}:{port}".encode()}
        # The address alone (its own name as SNI) would not match the certificate.
        bare = Endpoint("127.0.0.1", port, base.host_header, trusting, "127.0.0.1")
        with pytest.raises(ConnectFailed):
            await pool.request(bare, LIMITS, request_head("GET", "/", bare, [], b""), "GET")
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
