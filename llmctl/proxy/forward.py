"""Forwarding, the hot path: `POST /v1/*` (and vLLM's /tokenize, llama.cpp's /infill) as a
bare ASGI handler. Read the body → a `Route` → the key's limits → `control.admit` → the
exchange.

May import: clock, config, fim, lifecycle, upstream, proxy.answers, proxy.callers,
proxy.metrics, proxy.models, proxy.stream.

A client that hangs up at any point after its headers cancels the work: waiting for a
start stops waiting (the start goes on), and an upstream request in progress is cut,
which makes vLLM abort the generation.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from .. import fim
from ..clock import Clock
from ..config import ProxyConfig
from ..lifecycle import NotServing
from ..upstream import Pool
from .answers import Gone, Refused, anthropic_path, send_json
from .callers import ANYONE, Callers
from .metrics import Ledger
from .models import Control, Models, Routable
from .stream import Exchange, InfillAnswer

PATH = re.compile(r"^/v1(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$")
# vLLM's own model-addressed routes outside /v1, routed by `model` like the rest, and
# llama.cpp server's /infill (tab completion in llama.vscode-style plugins), mapped to FIM.
ROOT_ROUTES = ("/tokenize", "/detokenize", "/infill")
# Request headers not forwarded: hop-by-hop, the client's key, what upstream.py sets itself.
DROP_UP = {b"host", b"content-length", b"connection", b"keep-alive", b"authorization",
           b"x-api-key",
           b"transfer-encoding", b"te", b"upgrade", b"proxy-authorization",
           b"proxy-connection", b"x-request-id", b"accept-encoding", b"expect"}

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)")
# The Responses API's calls addressed by a response id, and the two vLLM 0.32 serves.
RESPONSE_ID = re.compile(r"/v1/responses/([A-Za-z0-9_-]{1,200})(/[a-z_]+)?")
BY_ID_SERVED = {("GET", None), ("POST", "/cancel")}
# Where each response id was made: its backend and the key that made it (bounded).
MAX_RESPONSE_IDS = 10_000
# The fields that ask for a number of output tokens, lowered to the model's context.
BUDGET_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def by_response_id(path: str) -> bool:
    """A route addressed by a response id (the forwarder answers those, any method)."""
    return path.startswith("/v1/responses/")


def prefer_wait(scope: Scope) -> float | None:
    """RFC 7240's `Prefer: wait=N`: the seconds a client will wait for a model to start
    (0: answer at once); None when it did not say."""
    for k, v in scope["headers"]:
        if k == b"prefer" and (m := _WAIT.search(v.decode("latin-1").lower())):
            return float(m.group(1))
    return None


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(v: Any) -> bool | None:
    """A flag as vLLM's request models read it (pydantic's lax bool: `1`, `"true"`,
    `"Yes"`…), so the proxy sees what the backend will; None: not a bool at all."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        low = v.lower()
        return True if low in _TRUE else False if low in _FALSE else None
    return None


def requested_output(data: dict[str, Any], context: int | None) -> int:
    """The tokens a request may generate, as its tpm reservation: what it asks for
    (capped at the model's context), or the whole context when it asks for no limit."""
    for k in BUDGET_FIELDS:
        v = data.get(k)
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return min(v, context) if context else v
    return context or 0


@dataclass(slots=True)
class Route:
    """Where a request goes and what it carries there."""

    backend: Routable
    body: bytes  # as the backend gets it (an alias rewritten, a FIM prompt rendered)
    path: str  # the backend's route (/infill and `suffix` requests become /v1/completions)
    answer: InfillAnswer | None = None  # turns the answer back into /infill's shape
    strip_usage: bool = False  # the stream's usage chunk was asked for here: take it out
    reserve: int = 0  # tokens held against the key's tpm until the answer's usage is known
    method: bytes = b"POST"
    said: tuple[tuple[bytes, bytes], ...] = ()  # response headers: what the proxy changed


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Forwarder:
    """The ASGI handler for forwarded requests."""

    def __init__(self, cfg: ProxyConfig, models: Models, callers: Callers, control: Control,
                 ledger: Ledger, clock: Clock) -> None:
        self.cfg, self.models, self.callers, self.control = cfg, models, callers, control
        self.ledger, self.clock = ledger, clock
        self._pool: Pool | None = None
        self.responses: OrderedDict[str, tuple[Routable, str]] = OrderedDict()

    def remember(self, response_id: str, b: Routable, caller: str) -> None:
        """A response id a backend made, for the calls addressed by it."""
        self.responses[response_id] = (b, caller)
        self.responses.move_to_end(response_id)
        while len(self.responses) > MAX_RESPONSE_IDS:
            self.responses.popitem(last=False)

    def pool(self) -> Pool:
        if self._pool is None:  # created on first use, inside the serving loop
            self._pool = Pool(read_timeout=self.cfg.request_timeout)
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        rid = scope["state"]["request_id"]
        id_header = [(b"x-request-id", rid.encode())]
        path = scope["path"]
        anthropic = anthropic_path(path)
        addressed = by_response_id(path)
        auth: list[bytes] = []
        x_key: list[bytes] = []
        up_headers = [(b"x-request-id", rid.encode())]
        typed = False
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth.append(v)
            elif k == b"x-api-key":
                x_key.append(v)
            elif k not in DROP_UP:
                typed = typed or k == b"content-type"
                up_headers.append((k, v))
        if not typed:  # the body is checked to be JSON below; say so, as vLLM expects
            up_headers.append((b"content-type", b"application/json"))
        caller, routed = ANYONE, "-"
        books = self.ledger
        try:
            caller = self.callers.identify(auth, x_key)
            if caller.metrics_only:
                raise Refused(403, f"the key '{caller.name}' reads /metrics and nothing else",
                              "forbidden")
            if not (PATH.fullmatch(path) or path in ROOT_ROUTES):  # NUL, `..` never reach a backend
                raise Refused(404, f"no route {path!r}", "not_found")
            body = await self._read_body(receive, scope)
            route = self.by_id(path, scope["method"], caller) if addressed else \
                self.route(body, path, caller)
            if scope.get("query_string"):  # `?beta=true` and the like, passed on
                route.path += "?" + scope["query_string"].decode("latin-1")
            routed = route.backend.model.name
            limits = caller.limits
            if limits is not None and (over := limits.admit(self.clock.monotonic(),
                                                            route.reserve)):
                what, wait = over
                raise Refused(429, f"rate limit of the key '{caller.name}': {what}; try "
                              f"again in {math.ceil(wait)} s", "rate_limit_exceeded",
                              headers=[(b"retry-after", b"%d" % math.ceil(wait)),
                                       (b"retry-after-ms", b"%d" % math.ceil(wait * 1000)),
                                       *limits.headers(self.clock.monotonic())])
        except Refused as r:
            await send_json(send, r.status, r.body(anthropic), r.headers + id_header)
            if caller is not ANYONE:  # a key's refusals (429, 404…) count as its errors
                books.tally.add(caller.name, routed, True, 0, 0, self.clock.time())
                books.metrics.child("key_requests", caller.name, routed, str(r.status)).inc()
            return
        except Gone:
            return
        backend = route.backend
        name = backend.model.name
        if limits is not None:
            id_header = [*limits.headers(self.clock.monotonic()), *id_header]
        if route.said:
            id_header = [*route.said, *id_header]
        gauge = books.metrics.child("in_flight", name)
        gauge.inc()
        ex = Exchange(name, rid, caller, t0, pool=self.pool(), ledger=books, clock=self.clock,
                      limits=limits, strip=route.strip_usage, answer=route.answer,
                      reserved=route.reserve, anthropic=anthropic,
                      on_id=(lambda i, b=backend, c=caller.name: self.remember(i, b, c))
                      if path == "/v1/responses" else None, metered=not addressed)
        asked = prefer_wait(scope)
        wait = self.cfg.request_timeout if asked is None else min(asked,
                                                                  self.cfg.request_timeout)
        disconnect = asyncio.ensure_future(_wait_disconnect(receive))
        work = asyncio.ensure_future(self._serve(route, ex, wait, up_headers, id_header, send))
        try:
            await asyncio.wait({work, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                # The client left: cancelling stops a wait for a start, or closes the
                # upstream connection, so vLLM aborts.
                work.cancel()
                ex.status = ex.status or 499
            disconnect.cancel()
            await asyncio.gather(work, disconnect, return_exceptions=True)
            gauge.dec()
            ex.finish()
        if not work.cancelled() and work.exception():
            raise work.exception()  # type: ignore[misc]

    async def _serve(self, route: Route, ex: Exchange, wait: float,
                     up_headers: list[tuple[bytes, bytes]], id_header: list[tuple[bytes, bytes]],
                     send: Send) -> None:
        try:
            async with self.control.admit(route.backend, wait):
                if (up_auth := route.backend.upstream_auth) is not None:
                    # A managed backend's key of its current start (read once admitted: a
                    # start it waited for made a new one), or a `url` model's `api_key`.
                    up_headers.append((b"authorization", up_auth))
                await ex.run(route.backend.model.upstream, route.path.encode(), route.body,
                             up_headers, id_header, send, route.method)
        except NotServing as e:
            ex.status = e.status
            # When it will not come back by itself, say so: the openai SDKs retry every 5xx
            # (with or without Retry-After) unless told not to.
            headers = [(b"retry-after", b"%d" % math.ceil(e.retry_after))] \
                if e.retry_after else [(b"x-should-retry", b"false")]
            await send_json(send, e.status, Refused(e.status, e.message, e.code).body(ex.anthropic),
                            headers + id_header)

    async def _read_body(self, receive: Receive, scope: Scope) -> bytes:
        limit = self.cfg.max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise Refused(413, f"request body is larger than {limit} bytes",
                              "request_too_large")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # also catches chunked bodies with no Content-Length
                raise Refused(413, f"request body is larger than {limit} bytes",
                              "request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def route(self, body: bytes, path: str, caller: Any = ANYONE) -> Route:
        """Where the body goes, rewritten for the backend where it must be."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "request body is not valid JSON", "invalid_json") from None
        except RecursionError:
            raise Refused(400, "request body is nested too deeply", "invalid_json") from None
        if not isinstance(data, dict):
            raise Refused(400, "request body must be a JSON object", "invalid_json")
        if path == "/infill" and not data.get("model"):
            data["model"] = self.models.infill_model()
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise Refused(400, "'model' is required and must be a string", "missing_model",
                          param="model")
        b = self.models.find(model, caller)
        context = b.served.get("max_model_len") or (
            b.model.max_model_len if b.model.managed else None)
        said: tuple[tuple[bytes, bytes], ...] = ()
        capped = False
        if context:
            # Agents ask for 32,000 output tokens; vLLM refuses more than the context but
            # fits anything up to it beside the prompt by itself: lower it, and say so.
            for k in BUDGET_FIELDS:
                v = data.get(k)
                if isinstance(v, int) and not isinstance(v, bool) and v > context:
                    data[k] = context
                    said += ((b"x-llmctl-capped", f"{k}={v}->{context}".encode()),)
                    capped = True
        reserve = 0
        if caller.limits is not None and caller.limits.tokens is not None:
            reserve = requested_output(data, context)
        if path == "/infill" or (path == "/v1/completions" and data.get("suffix") is not None):
            route = self._fim(b, data, path)
            route.reserve, route.said = reserve, said
            return route
        rewrite = model != b.model.name or capped  # an alias: the backend knows only the served name
        data["model"] = b.model.name
        added = False
        if self.callers.counting and lax_bool(data.get("stream")):
            # Tokens are counted from `usage`, which a stream carries only when asked for;
            # the flags are written back as plain booleans, so what vLLM reads (it takes
            # `"true"` and `1` too) is what the proxy decided on.
            opts = data.get("stream_options")
            opts = opts if isinstance(opts, dict) else {}
            added = lax_bool(opts.get("include_usage")) is not True
            data["stream"] = True
            data["stream_options"] = {**opts, "include_usage": True}
            rewrite = True
        if rewrite:
            body = json.dumps(data).encode()
        return Route(b, body, path, None, added, reserve, said=said)

    def by_id(self, path: str, method: str, caller: Any) -> Route:
        """A Responses API call addressed by a response id: to the backend that made it,
        for the key that made it."""
        m = RESPONSE_ID.fullmatch(path)
        if m is None or (method, m.group(2)) not in BY_ID_SERVED:
            raise Refused(404, f"{method} {path}: vLLM does not serve this Responses API "
                          "call (it serves GET /v1/responses/{id} and POST …/{id}/cancel)",
                          "not_supported")
        owner = self.responses.get(m.group(1))
        if owner is None or (owner[1] != caller.name and not caller.admin):
            raise Refused(404, f"no response {m.group(1)!r} here: llmctl routes a response "
                          "id to the model that made it, for the key that made it (ids from "
                          "before a restart are gone; a model keeps responses only with "
                          "`store_responses = true`)", "not_found")
        self.responses.move_to_end(m.group(1))
        return Route(owner[0], b"", path, method=method.encode())

    def _fim(self, b: Routable, data: dict[str, Any], path: str) -> Route:
        """Render the model's FIM template into a plain completion (vLLM refuses `suffix`)."""
        if not b.fim:
            raise Refused(400, f"model '{b.model.name}' has no fill-in-the-middle template, "
                          f"so it cannot take 'suffix'; set `fim = \"deepseek\"` (or "
                          f"starcoder, qwen, codellama, codestral) in [models.{b.model.key}]",
                          "fim_not_supported", param="suffix")
        try:
            if path == "/infill":
                out = fim.infill(data, b.model.name, b.fim)
                answer: InfillAnswer | None = InfillAnswer(b.model.name, bool(out.get("stream")))
            else:
                out, answer = fim.completion({**data, "model": b.model.name}, b.fim), None
        except fim.FimError as e:
            raise Refused(400, str(e), "invalid_fim_request") from None
        return Route(b, json.dumps(out).encode(), "/v1/completions", answer)
