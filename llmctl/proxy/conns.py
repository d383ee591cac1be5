"""Connections: a bounded number, heads that must arrive in time and in size, so a flood of
idle or half-sent connections cannot take the proxy's file descriptors or its loop.

May import: nothing of the package (uvicorn and httptools only). `guarded(...)` makes a
subclass of uvicorn's httptools protocol, given to uvicorn as its `http` class:

- at most `max_connections` open; at the cap, a new connection evicts the connection that
  has been quiet longest among those not in the middle of a request (idle keep-alive,
  or still sending its head), so `/health` and real clients still get in under a flood
  of idle sockets. uvicorn's own `limit_concurrency` would answer 503 to everyone
  instead, `/health` included;
- a request head (request line and headers) must be complete within `header_timeout`
  seconds of the connection opening or of the previous answer: uvicorn times out idle
  keep-alive connections, but not a client that sends a byte now and then;
- a head over `max_header_bytes` gets 431 and the connection is closed, after at most
  one socket read past the limit (llhttp sets no limit of its own).
"""

from __future__ import annotations

import logging
import resource
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("llmctl.proxy")

# Descriptors kept for everything that is not a client connection: an upstream connection
# per request in flight, log files, backend pipes, sqlite.
RESERVED_FDS = 128


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int, soft_limit: int) -> int:
    """The connections the proxy keeps open at most: as configured, but never more than
    the descriptors allow (each client may need an upstream connection beside it)."""
    return max(16, min(configured, (soft_limit - RESERVED_FDS) // 2))


class Guard:
    """What all connections of one server share: the open ones, least recently active first."""

    def __init__(self, max_connections: int, header_timeout: float,
                 max_header_bytes: int) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.open: OrderedDict[Any, None] = OrderedDict()
        self.evicted = 0  # connections closed to make room
        self.timed_out = 0  # heads that did not arrive in time
        self.too_large = 0  # heads over the size limit
        self._sweeping: Any = None  # the once-a-second timer, while connections are open

    def sweep(self, loop: Any) -> None:
        """Close the connections whose head is late. One timer for all, once a second,
        instead of one per request (a timer per request costs the hot path)."""
        self._sweeping = None
        try:
            now = loop.time()
            for c in [c for c in self.open if c.head_late(now)]:
                self.timed_out += 1
                self.open.pop(c, None)
                c.drop()
        except Exception:  # a loop that fails once must not stop for good: log, go on
            log.exception("closing connections whose headers are late failed")
        finally:
            if self.open:
                self.watch(loop)

    def watch(self, loop: Any) -> None:
        if self._sweeping is None:
            self._sweeping = loop.call_later(min(1.0, self.header_timeout / 2), self.sweep,
                                             loop)

    def admit(self, conn: Any) -> bool:
        """Room for `conn`, by evicting the quietest connection not serving a request."""
        if len(self.open) >= self.max_connections:
            victim = next((c for c in self.open if not c.busy), None)
            if victim is None:
                return False  # every connection is in the middle of a request
            del self.open[victim]
            self.evicted += 1
            victim.drop()
        self.open[conn] = None
        return True

    def touch(self, conn: Any) -> None:
        if conn in self.open:
            self.open.move_to_end(conn)

    def forget(self, conn: Any) -> None:
        self.open.pop(conn, None)


_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%b")
_431_BODY = (b'{"error": {"message": "the request head (request line and headers) is larger '
             b'than the proxy takes", "type": "invalid_request_error", "param": null, '
             b'"code": "headers_too_large"}}')


def guarded(guard: Guard) -> type:
    """uvicorn's httptools protocol, with `guard`'s limits."""

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self._head = 0  # bytes of the head being received; -1: none pending
            self._since = 0.0  # when the head became due (loop time)
            super().connection_made(transport)
            if not guard.admit(self):
                transport.abort()
                return
            self._since = self.loop.time()
            guard.watch(self.loop)

        @property
        def busy(self) -> bool:
            """In the middle of a request: its head is in and its answer is not done."""
            return self._head < 0 and self.cycle is not None and \
                not self.cycle.response_complete

        def head_late(self, now: float) -> bool:
            return self._head >= 0 and now - self._since > guard.header_timeout

        def drop(self) -> None:
            self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            guard.forget(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            guard.touch(self)
            if self._head >= 0:
                self._head += len(data)
            super().data_received(data)
            if self._head > guard.max_header_bytes and not self.transport.is_closing():
                guard.too_large += 1
                self.transport.write(_431 % (len(_431_BODY), _431_BODY))
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head < 0:  # a pipelined request begins: its head is counted anew
                self._head = 0

        def on_headers_complete(self) -> None:
            self._head = -1
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next head is due within header_timeout (an idle keep-alive connection
            # is closed sooner by uvicorn's own timeout).
            self._head, self._since = 0, self.loop.time()

    return GuardedProtocol
