"""The exchange: one upstream request and its answer, streamed back to the client, and what
is written into the books when it ends.

May import: clock, fim, limits, upstream, proxy.answers, proxy.callers,
proxy.metrics.

Bytes are passed through untouched: the status, the headers, the body, SSE events as
they arrive. An event stream is spliced (`Exchange._splice`): each upstream socket read
is written to the client's transport from the socket callback, with no task woken and
no ASGI message built per event. Two filters turn an answer on its way: the usage chunk
llmctl asked for and the client did not is taken out (`UsageStripper`), and an OpenAI
completion becomes llama.cpp's `/infill` answer (`InfillAnswer`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Send

from .. import fim
from ..clock import Clock
from ..limits import Limits
from ..upstream import Pool, UpstreamError, UpstreamTimeout
from .answers import JSON, error_body, openai_error, send_json
from .callers import ANYONE, Caller
from .metrics import Ledger

log = logging.getLogger("llmctl.proxy")

# Response headers not passed back: hop-by-hop and those the ASGI server sets.
DROP_DOWN = {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server",
             b"x-request-id", b"content-length"}

_PROMPT = re.compile(rb'"prompt_tokens":\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens":\s*(\d+)')
# Anthropic's Messages and OpenAI's Responses name them input and output tokens; Anthropic
# counts the prompt's cached part apart from `input_tokens`.
_INPUT = re.compile(rb'"input_tokens":\s*(\d+)')
_OUTPUT = re.compile(rb'"output_tokens":\s*(\d+)')
_CACHED = re.compile(rb'"cache_(?:read|creation)_input_tokens":\s*(\d+)')
_RESPONSE_ID = re.compile(rb'"id":\s*"(resp_[A-Za-z0-9_-]{1,200})"')


def usage(tail: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the `usage` object at the end of an answer: Chat
    and Completions', Anthropic Messages' or the Responses API's."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    seg = tail[at:]
    p, c = _PROMPT.findall(seg), _COMPLETION.findall(seg)
    if p and c:
        return int(p[-1]), int(c[-1])
    i, o = _INPUT.findall(seg), _OUTPUT.findall(seg)
    if i and o:
        return int(i[0]) + sum(int(x) for x in _CACHED.findall(seg)), int(o[0])
    return None


def spliceable(cycle: Any, resp: Any) -> bool:
    """Whether an answer can go the splice way: an event stream to a client served by
    uvicorn's httptools protocol with chunked encoding (anything else takes the ASGI
    loop, which works everywhere)."""
    return (type(cycle).__name__ == "RequestResponseCycle"
            and getattr(cycle, "chunked_encoding", None) is True
            and not getattr(cycle, "response_complete", True)
            and hasattr(cycle, "transport") and hasattr(cycle, "flow")
            and any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in resp.headers))


class UsageStripper:
    """A stream with the usage chunk llmctl asked for taken out (the client did not ask
    for it): whole SSE events pass, the last one with no choices and a `usage` does not."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.buf + chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.buf = data
            return b""
        done, self.buf = data[:cut + 2], data[cut + 2:]
        if b'"usage"' not in done:
            return done
        return b"".join(ev + b"\n\n" for ev in done.split(b"\n\n")[:-1]
                        if not _usage_only(ev))

    def close(self) -> bytes:
        out, self.buf = self.buf, b""
        return out


def _usage_only(event: bytes) -> bool:
    if b'"usage"' not in event:
        return False
    try:
        obj = json.loads(event.strip().removeprefix(b"data:").strip())
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and bool(obj.get("usage"))


class InfillAnswer:
    """OpenAI completion bytes in, llama.cpp /infill bytes out: the whole JSON answer, or
    each SSE event of a stream."""

    def __init__(self, model: str, stream: bool) -> None:
        self.model, self.stream = model, stream
        self.content_type = b"text/event-stream" if stream else b"application/json"
        self.buf = b""
        # The last event (stop: true) is held until the stream ends, so the usage chunk
        # that follows it joins it: one `stop: true` event, as llama.cpp sends.
        self.final: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk
        if not self.stream:
            return b""
        *events, self.buf = self.buf.split(b"\n\n")
        out = []
        for ev in events:
            data = ev.strip().removeprefix(b"data:").strip()
            if data == b"[DONE]":
                out.append(self._flush())
                continue
            if not data:
                continue
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            answer = fim.infill_answer(msg, self.model)
            if self.final is not None:  # after the stop: only the usage may come
                self.final.update({k: v for k, v in answer.items()
                                   if k.startswith("tokens_")})
            elif answer["stop"]:
                self.final = answer
            else:
                out.append(b"data: " + json.dumps(answer).encode() + b"\n\n")
        return b"".join(out)

    def _flush(self) -> bytes:
        final, self.final = self.final, None
        return b"" if final is None else b"data: " + json.dumps(final).encode() + b"\n\n"

    def close(self) -> bytes:
        if self.stream:
            return self.feed(b"\n\n") + self._flush()
        try:
            return json.dumps(fim.infill_answer(json.loads(self.buf), self.model)).encode()
        except ValueError:
            return self.buf


class Exchange:
    """One request's life after routing: the upstream call, the answer streamed back, and
    its line in the books (`finish`)."""

    def __init__(self, name: str, rid: str, caller: Caller, t0: float, *, pool: Pool,
                 ledger: Ledger, clock: Clock, limits: Limits | None = None,
                 strip: bool = False, answer: InfillAnswer | None = None,
                 reserved: int = 0, anthropic: bool = False,
                 on_id: Callable[[str], None] | None = None, metered: bool = True) -> None:
        self.name, self.rid, self.caller, self.t0 = name, rid, caller, t0
        self.pool, self.ledger, self.clock = pool, ledger, clock
        self.limits = limits  # the key's limits that admitted it, told when it ends
        self.strip = strip  # take out the usage chunk llmctl asked for
        self.answer = answer  # turns the answer into another API's shape; None: as it is
        self.reserved = reserved  # tokens the limits hold for it until `finish`
        self.anthropic = anthropic  # errors in Anthropic's shape (the Messages routes)
        self.on_id = on_id  # told the response id of a Responses API answer
        self.metered = metered  # False: its answer's `usage` is an old one (a stored
        # response read back by id), not tokens made now
        self.status = 0
        self.ttfb: float | None = None
        self.tokens: tuple[int, int] | None = None
        # For an answer that ends with no `usage` (the client hung up, the stream was
        # cut): the prompt's size in bytes and the SSE events that reached the client.
        self.sent_body = 0
        self.events = 0

    async def run(self, base: str, path: bytes, body: bytes,
                  headers: list[tuple[bytes, bytes]], id_header: list[tuple[bytes, bytes]],
                  send: Send, method: bytes = b"POST") -> None:
        name, m = self.name, self.ledger.metrics
        self.sent_body = len(body)
        try:
            resp = await self.pool.post(base, path, headers, body, method)
        except UpstreamTimeout:
            m.child("upstream_errors", name, "timeout").inc()
            self.status = 504
            await send_json(send, 504, error_body(504, f"model '{name}' did not answer in time",
                                                  code="upstream_timeout",
                                                  anthropic=self.anthropic), id_header)
            return
        except UpstreamError as e:
            m.child("upstream_errors", name, "connect").inc()
            self.status = 503
            await send_json(send, 503, error_body(
                503, f"model '{name}' is not reachable ({e})", code="model_unavailable",
                anthropic=self.anthropic), [(b"retry-after", b"5"), *id_header])
            return
        if resp.status >= 400 and self.answer is None:
            return await self._error(resp, id_header, send)
        if self.answer is not None and resp.status == 200:
            return await self._translate(resp, self.answer, id_header, send)
        try:
            self.status = resp.status
            headers_out = [(k.lower(), v) for k, v in resp.headers
                           if k.lower() not in DROP_DOWN]
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": headers_out + id_header})
            prev = last = b""
            first = True
            stripper = UsageStripper() if self.strip and resp.status == 200 else None
            cycle = getattr(send, "__self__", None)
            if stripper is None and spliceable(cycle, resp):
                await self._splice(resp, cycle, send)
                return
            while True:
                # Everything that has arrived, at once: under load several SSE events ride
                # in one write; nothing is ever held back waiting for more.
                chunk = await resp.read()
                if not chunk:
                    break
                if first:
                    self.ttfb = time.perf_counter() - self.t0
                    m.child("ttfb", name).observe(self.ttfb)
                    first = False
                prev, last = last, chunk  # `usage` comes at the end; keep only the tail
                self.events += chunk.count(b"data: {")
                if self.on_id is not None:
                    self._find_id(chunk)
                if stripper is not None and not (chunk := stripper.feed(chunk)):
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body",
                        "body": stripper.close() if stripper is not None else b""})
            self.tokens = usage(prev + last)
        except UpstreamError:
            # Mid-answer: the status line is gone; closing the stream is all that is left.
            m.child("upstream_errors", name, "midstream").inc()
        finally:
            resp.close()  # kept alive when read whole; cut otherwise, so vLLM aborts

    def _find_id(self, chunk: bytes) -> None:
        """The Responses API's answer (or its first event) names its id: remembered, so the
        calls addressed by it reach this backend."""
        if self.status == 200 and (m := _RESPONSE_ID.search(chunk)):
            assert self.on_id is not None
            self.on_id(m.group(1).decode())
            self.on_id = None

    async def _error(self, resp: Any, id_header: list[tuple[bytes, bytes]], send: Send) -> None:
        """A backend's error, in OpenAI's shape whoever wrote it: vLLM's own errors pass
        as they are; FastAPI's `{"detail": …}` (an unknown route) and plain text are
        wrapped. Errors are small: read whole (up to 1 MB)."""
        self.status = resp.status
        try:
            raw = b""
            while len(raw) < 1 << 20 and (chunk := await resp.read()):
                raw += chunk
        except UpstreamError:
            raw = b""
        finally:
            resp.close()
        body = openai_error(resp.status, raw, self.name, self.anthropic)
        headers = [(k.lower(), v) for k, v in resp.headers if k.lower() not in DROP_DOWN]
        if body is not raw:
            headers = [(k, v) for k, v in headers if k != b"content-type"] + JSON
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [*headers, (b"content-length", b"%d" % len(body)), *id_header]})
        await send({"type": "http.response.body", "body": body})

    async def _splice(self, resp: Any, cycle: Any, send: Send) -> None:
        """An event stream, passed through from the upstream socket's callback straight to
        the client's transport: what one socket read brought becomes one chunked write,
        with no task woken and no ASGI message built per event (the loop in `run` costs
        about twice the CPU per chunk). uvicorn's own `send` still starts and ends the
        response, and its flow control still pauses the upstream for a slow client."""
        transport, flow = cycle.transport, cycle.flow
        tail = [b"", b""]  # the last two pieces: the `usage` is at the end

        def sink(data: bytes) -> bool:
            if self.ttfb is None:
                self.ttfb = time.perf_counter() - self.t0
                self.ledger.metrics.child("ttfb", self.name).observe(self.ttfb)
            tail[0], tail[1] = tail[1], data
            self.events += data.count(b"data: {")
            if self.on_id is not None:
                self._find_id(data)
            if transport.is_closing():
                return False  # the client left: the disconnect watch cancels this exchange
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            return flow.write_paused

        resp.splice(sink)
        while not await resp.wait():
            await flow.drain()
            resp.resume()
        await send({"type": "http.response.body", "body": b""})
        self.tokens = usage(tail[0] + tail[1])

    async def _translate(self, resp: Any, answer: InfillAnswer,
                         id_header: list[tuple[bytes, bytes]], send: Send) -> None:
        """An answer in another API's shape (llama.cpp's /infill), event by event."""
        self.status = 200
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", answer.content_type), *id_header]})
            tail = b""
            while chunk := await resp.read():
                if self.ttfb is None:
                    self.ttfb = time.perf_counter() - self.t0
                tail = (tail + chunk)[-4096:]
                self.events += chunk.count(b"data: {")
                if out := answer.feed(chunk):
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": answer.close()})
            self.tokens = usage(tail)
        except UpstreamError:
            self.ledger.metrics.child("upstream_errors", self.name, "midstream").inc()
        finally:
            resp.close()

    def finish(self) -> None:
        """The request's line in the books: metrics, the key's limits and usage, the log."""
        m, name, books = self.ledger.metrics, self.name, self.ledger
        dt = time.perf_counter() - self.t0
        m.child("requests", name, str(self.status)).inc()
        c = self.caller
        if not self.metered:
            self.tokens = None
        estimated = self.metered and self.tokens is None and self.sent_body > 0 and \
            (self.status == 499 or self.events > 0)
        if estimated:
            # No `usage` came (a cut stream, a client that left): charge what went out —
            # about 4 bytes a prompt token, and a token per event the client received.
            self.tokens = (self.sent_body // 4, self.events)
        prompt_n, completion_n = self.tokens or (0, 0)
        if self.limits is not None:
            self.limits.done(self.clock.monotonic(), prompt_n + completion_n, self.reserved)
        if c is not ANYONE:
            books.tally.add(c.name, name, not 200 <= self.status < 400, prompt_n,
                            completion_n, self.clock.time())
            m.child("key_requests", c.name, name, str(self.status)).inc()
            if self.tokens:
                m.child("key_tokens", c.name, name, "prompt").inc(prompt_n)
                m.child("key_tokens", c.name, name, "completion").inc(completion_n)
        books.counters["requests"] += 1
        if self.tokens:
            books.counters["tokens"] += self.tokens[1]
        m.child("latency", name).observe(dt)
        prompt, completion = self.tokens or ("-", "-")
        if estimated:
            prompt, completion = f"~{prompt}", f"~{completion}"
        log.info("id=%s key=%s model=%s status=%s ttfb_ms=%s ms=%.1f prompt_tokens=%s "
                 "completion_tokens=%s", self.rid, c.log, name, self.status,
                 f"{self.ttfb * 1000:.1f}" if self.ttfb is not None else "-", dt * 1000,
                 prompt, completion)
