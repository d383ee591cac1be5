"""The proxy's own HTTP/1.1 client against raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio

import pytest

from llmctl.upstream import Pool, UpstreamError, UpstreamTimeout

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def read_all(resp) -> bytes:
    out = b""
    while chunk := await resp.read():
        out += chunk
    return out


def test_keep_alive_reuse_and_a_stale_socket_is_retried_once():
    requests_per_conn: list[int] = []  # how many requests each connection carried

    async def handler(reader, writer):
        n = len(requests_per_conn)
        requests_per_conn.append(0)
        await read_request(reader)
        requests_per_conn[n] += 1
        writer.write(OK)
        await writer.drain()
        if n == 0:
            # Like a server whose keep-alive timer fires just as the next request comes:
            # read it, answer nothing, close.
            await read_request(reader)
            requests_per_conn[n] += 1
        writer.close()

    async def go():
        server, url = await serve(handler)
        pool = Pool(read_timeout=5)
        r = await pool.post(url, b"/v1/x", [], b"{}")
        assert r.status == 200 and await read_all(r) == b"{}"
        r.close()
        r = await pool.post(url, b"/v1/x", [], b"{}")  # stale socket, then a fresh one
        assert r.status == 200 and await read_all(r) == b"{}"
        r.close()
        # The second request went first over the kept-alive socket (which died), then,
        # once, over a new one: a pool that never reused sockets would show [1, 1].
        assert requests_per_conn == [2, 1]
        await pool.close()
        server.close()

    asyncio.run(go())


def test_request_bytes_are_as_given():
    seen = []

    async def handler(reader, writer):
        seen.append(await read_request(reader))
        writer.write(OK)
        writer.close()

    async def go():
        server, url = await serve(handler)
        pool = Pool(read_timeout=5)
        r = await pool.post(url, b"/v1/chat/completions", [(b"x-request-id", b"abc")],
                            b'{"a": 1}')
        await read_all(r)
        r.close()
        await pool.close()
        server.close()

    asyncio.run(go())
    req = seen[0]
    assert req.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nx-request-id: abc\r\n" in req and b"content-length: 8\r\n" in req
    assert req.endswith(b'\r\n\r\n{"a": 1}')


def test_a_large_answer_to_a_slow_reader_arrives_whole():
    payload = bytes(range(256)) * 16384  # 4 MiB, more than the pause threshold

    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 65536):
            part = payload[i:i + 65536]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go():
        server, url = await serve(handler)
        pool = Pool(read_timeout=5)
        r = await pool.post(url, b"/v1/x", [], b"{}")
        got = b""
        while chunk := await r.read():
            got += chunk
            await asyncio.sleep(0.01)
            assert r._conn.buffered <= 2 << 20
        assert got == payload
        r.close()
        await pool.close()
        server.close()

    asyncio.run(go())


def test_refused_silent_and_broken_upstreams():
    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    async def broken(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.transport.abort()

    async def go():
        pool = Pool(read_timeout=0.5)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.post("http://127.0.0.1:9", b"/v1/x", [], b"{}")
        server, url = await serve(silent)
        with pytest.raises(UpstreamTimeout):
            await pool.post(url, b"/v1/x", [], b"{}")
        server.close()
        server, url = await serve(broken)
        r = await pool.post(url, b"/v1/x", [], b"{}")
        assert await r.read() == b"hello"
        with pytest.raises(UpstreamError, match="closed"):
            await r.read()
        r.close()
        server.close()
        await pool.close()

    asyncio.run(go())


def test_silence_mid_answer_times_out():
    async def stalls(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def go():
        pool = Pool(read_timeout=0.5)
        server, url = await serve(stalls)
        r = await pool.post(url, b"/v1/x", [], b"{}")
        assert await r.read() == b"hi"
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            await r.read()
        # Well before the server's 5 s silence would have ended by itself.
        assert 0.4 < asyncio.get_running_loop().time() - t0 < 4.5
        r.close()
        server.close()
        await pool.close()

    asyncio.run(go())


def test_an_answer_delimited_by_eof_ends_normally():
    async def old_style(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n")
        writer.write(b"all of it")
        await writer.drain()
        writer.close()

    async def go():
        pool = Pool(read_timeout=5)
        server, url = await serve(old_style)
        r = await pool.post(url, b"/v1/x", [], b"{}")
        assert r.status == 200 and await read_all(r) == b"all of it"
        r.close()
        server.close()
        await pool.close()

    asyncio.run(go())


def test_a_base_url_path_prefixes_the_request_and_https_gets_tls(tmp_path, monkeypatch):
    """A hosted endpoint as a `url` model: https://host/openai/v1 → TLS to host, and
    POST /openai/v1/chat/completions."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as the system's CAs would be
    seen = []

    async def handler(reader, writer):
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()
        writer.close()

    async def go():
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(read_timeout=5)
        r = await pool.post(f"https://localhost:{port}/openai/v1", b"/v1/chat/completions",
                            [], b"{}")
        assert r.status == 200 and await read_all(r) == b"{}"
        r.close()
        with pytest.raises(UpstreamError, match="only http:// and https://"):
            await pool.post("ftp://localhost/v1", b"/v1/x", [], b"{}")
        await pool.close()
        server.close()

    asyncio.run(go())
    assert seen[0].startswith(b"POST /openai/v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nhost: localhost:" in seen[0]
