"""upstream.py's splice mode, with a fake socket: body bytes reach the sink from the
socket callback, one call per read, and a full sink pauses the backend socket."""

import asyncio

from llmctl.upstream import Response, _Conn


class FakeTransport:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pause_reading(self) -> None:
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.events.append("resume")

    def abort(self) -> None:
        self.events.append("abort")

    def close(self) -> None:
        self.events.append("close")


class FakePool:
    read_timeout = 60.0

    def __init__(self, loop) -> None:
        self.loop = loop
        self.released: list = []

    def _release(self, conn) -> None:
        self.released.append(conn)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def test_splice_batches_each_read_and_pauses_when_the_sink_is_full():
    async def go() -> None:
        loop = asyncio.get_running_loop()
        conn = _Conn(loop, ("h", 1))
        t = FakeTransport()
        conn.connection_made(t)
        conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                           b"transfer-encoding: chunked\r\n\r\n" + chunk(b"data: a\n\n"))
        pool = FakePool(loop)
        resp = Response(pool, conn)
        got: list[bytes] = []
        full = [False]

        def sink(data: bytes) -> bool:
            got.append(data)
            return full[0]

        resp.splice(sink)  # what arrived before comes first
        assert got == [b"data: a\n\n"]
        # Two chunks in one socket read: one call, one downstream write.
        conn.data_received(chunk(b"data: b\n\n") + chunk(b"data: c\n\n"))
        assert got[-1] == b"data: b\n\ndata: c\n\n" and len(got) == 2
        # The sink is full: the backend socket pauses and wait() says so …
        full[0] = True
        conn.data_received(chunk(b"data: d\n\n"))
        assert t.events == ["pause"]
        assert await resp.wait() is False
        # … until resume; then the end of the answer ends the wait.
        full[0] = False
        resp.resume()
        assert t.events == ["pause", "resume"]
        conn.data_received(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        assert await asyncio.wait_for(resp.wait(), 1) is True
        assert b"".join(got) == b"data: a\n\ndata: b\n\ndata: c\n\ndata: d\n\ndata: [DONE]\n\n"
        resp.close()
        assert pool.released == [conn]  # read whole: back to the pool for the next request

    asyncio.run(go())
