"""A minimal HTTP/1.1 client for the proxy's upstream hop: keep-alive pool, httptools parser.

May import: nothing of the package (and httptools). It does one thing — POST bytes to a
backend on loopback or the LAN and hand back status, headers and body pieces as they
arrive — with as little work per piece as possible, because every SSE chunk of every
stream crosses it. Measured against httpx and aiohttp with tests/perf/bench_proxy.py.

Not a general client: no redirects, no proxies, no compression. https:// upstreams (a
hosted endpoint as a `url` model) get TLS with the system's certificates; a base URL's
path ("https://host/openai/v1") prefixes the request's path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

PAUSE_AT = 1 << 20  # bytes waiting for a slow client before the backend socket is paused


class UpstreamError(Exception):
    """Could not connect, or the connection broke before the answer began."""


class UpstreamTimeout(UpstreamError):
    """The backend stayed silent longer than the read timeout."""


class _Conn(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> None:
        self.loop, self.key = loop, key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reset()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.head = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: BaseException | None = None
        self.keep_alive = False
        self.paused = False
        self.got_bytes = False
        self.last_io = self.loop.time()
        # Splice mode (Response.splice): body bytes go straight to `sink` from the
        # socket callback, one call per socket read, with no task woken per chunk.
        self.sink: Callable[[bytes], bool] | None = None
        self.batch: list[bytes] | None = None

    # ── asyncio.Protocol ──
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_io = self.loop.time()
        self.got_bytes = True
        sink = self.sink
        if sink is not None:
            self.batch = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad HTTP from upstream: {e}"))
            self.transport.close()  # type: ignore[union-attr]
        finally:
            if sink is not None:
                # Every chunk this read carried, in one piece: one write downstream.
                batch, self.batch = self.batch, None
                if batch and sink(batch[0] if len(batch) == 1 else b"".join(batch)) \
                        and not self.paused:
                    self.paused = True  # the client is slow: stop reading the backend
                    self.transport.pause_reading()  # type: ignore[union-attr]
                    self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done and exc is None and self.head.done() and self._until_eof():
            # An answer with neither Content-Length nor chunked encoding ends at EOF.
            self.done = True
            self.keep_alive = False
            self._wake()
        elif not self.done:
            self._fail(UpstreamError(f"upstream closed the connection ({exc or 'EOF'})"))

    def _until_eof(self) -> bool:
        names = {k.lower() for k, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # ── httptools callbacks ──
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.batch is not None:
            self.batch.append(body)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_AT and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    # ── helpers ──
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        if not self.head.done():
            self.head.set_exception(e)
            self.head.exception()  # retrieved here: no "never retrieved" warning
        self._wake()

    async def read(self) -> bytes:
        """Everything that has arrived (b"" at the end of the answer)."""
        while not self.chunks:
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data


class Response:
    def __init__(self, pool: Pool, conn: _Conn) -> None:
        self._pool, self._conn = pool, conn
        self.status = conn.status
        self.headers = conn.headers
        self._watch = pool.loop.call_later(pool.read_timeout, self._check)

    def _check(self) -> None:
        c = self._conn
        if c.done or c.closed:
            return
        idle = c.loop.time() - c.last_io
        if idle >= self._pool.read_timeout:
            c._fail(UpstreamTimeout(f"upstream silent for {idle:.0f} s"))
            c.transport.abort()  # type: ignore[union-attr]
        else:
            self._watch = c.loop.call_at(c.last_io + self._pool.read_timeout, self._check)

    async def read(self) -> bytes:
        return await self._conn.read()

    def splice(self, sink: Callable[[bytes], bool]) -> None:
        """From now on, hand body bytes to `sink` as they arrive, from the socket callback
        itself (what is already buffered first). `sink` returns True when its consumer is
        full: reading pauses until `resume`."""
        c = self._conn
        if c.chunks:
            data = b"".join(c.chunks)
            c.chunks.clear()
            c.buffered = 0
            if sink(data):
                c.paused = True
                c.transport.pause_reading()  # type: ignore[union-attr]
        c.sink = sink

    async def wait(self) -> bool:
        """In splice mode: True at the end of the answer, False when the sink asked to
        pause (call `resume` once it has room); raises UpstreamError."""
        c = self._conn
        while True:
            if c.error is not None:
                raise c.error
            if c.done:
                return True
            if c.paused:
                return False
            c.waiter = c.loop.create_future()
            await c.waiter

    def resume(self) -> None:
        c = self._conn
        if c.paused:
            c.paused = False
            c.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        """Back to the pool when the answer was read whole; else the socket is cut,
        which is how the backend learns that nobody wants the rest (vLLM aborts)."""
        self._watch.cancel()
        c = self._conn
        if c.done and c.keep_alive and not c.closed and c.error is None:
            self._pool._release(c)
        elif c.transport is not None:
            c.transport.abort()


class Pool:
    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 600.0,
                 max_idle: int = 256) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout, self.read_timeout, self.max_idle = (connect_timeout, read_timeout,
                                                                  max_idle)
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._hosts: dict[str, tuple[str, int, bool, bytes, bytes]] = {}
        self._ssl: Any = None  # one TLS context, made at the first https:// upstream

    def _target(self, base: str) -> tuple[str, int, bool, bytes, bytes]:
        """(host, port, TLS, Host header, path prefix) of a base URL."""
        t = self._hosts.get(base)
        if t is None:
            u = urlsplit(base)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise UpstreamError(f"only http:// and https:// upstreams are supported, "
                                    f"not {base!r}")
            tls = u.scheme == "https"
            port = u.port or (443 if tls else 80)
            # The request paths are /v1/…: a base that ends in /v1 gives only its prefix.
            prefix = u.path.rstrip("/").removesuffix("/v1").encode()
            host = u.hostname if u.port is None else f"{u.hostname}:{port}"
            t = self._hosts[base] = (u.hostname, port, tls, host.encode(), prefix)
        return t

    async def _connect(self, key: tuple[str, int], tls: bool = False) -> _Conn:
        ssl_ctx = None
        if tls:
            if self._ssl is None:
                import ssl

                self._ssl = ssl.create_default_context()
            ssl_ctx = self._ssl
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self.loop, key), *key, ssl=ssl_ctx),
                self.connect_timeout)
        except TimeoutError:
            raise UpstreamError(f"connecting to {key[0]}:{key[1]} timed out") from None
        except OSError as e:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: "
                                f"{e.strerror or e}") from None
        return conn

    def _release(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < self.max_idle:
            conn.reset()
            idle.append(conn)
        else:
            conn.transport.close()  # type: ignore[union-attr]

    async def post(self, base: str, path: bytes, headers: list[tuple[bytes, bytes]],
                   body: bytes, method: bytes = b"POST") -> Response:
        """Send the request (a POST, unless told); return once the status line and headers
        are in."""
        host, port, tls, hostport, prefix = self._target(base)
        key = (host, port)
        head = b"".join([method, b" ", prefix, path, b" HTTP/1.1\r\nhost: ", hostport,
                         b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
                         *(k + b": " + v + b"\r\n" for k, v in headers), b"\r\n"])
        for attempt in (0, 1):
            idle = self._idle.get(key)
            conn = None
            while idle:
                c = idle.pop()
                if not c.closed and not c.transport.is_closing():  # type: ignore[union-attr]
                    conn = c
                    break
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, tls)
            conn.transport.write(head + body)  # type: ignore[union-attr]
            resp_timer = self.loop.call_later(self.read_timeout, conn._fail,
                                              UpstreamTimeout("no answer in time"))
            try:
                await conn.head
            except UpstreamTimeout:
                conn.transport.abort()  # type: ignore[union-attr]
                raise
            except UpstreamError:
                conn.transport.abort()  # type: ignore[union-attr]
                # A kept-alive socket the backend had already closed: nothing was processed,
                # so sending once more on a fresh connection is safe.
                if reused and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.transport.abort()  # type: ignore[union-attr]
                raise
            finally:
                resp_timer.cancel()
            return Response(self, conn)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                if c.transport is not None:
                    c.transport.close()
        self._idle.clear()
