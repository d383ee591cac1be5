"""The gateway: auth, route by `model`, pass bytes through, report health and metrics.

May import: config (and fastapi, httpx, prometheus_client). Knows backends only
through the small `Routable` shape (a model, a state, an in-flight counter), so
tests drive it with plain objects and a local upstream.

Bytes are passed through untouched: the request body (unless an alias has to be
rewritten to the served name), the response status, headers and body, SSE chunks
as they arrive. A client that hangs up closes the upstream request, which makes
vLLM abort the generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from .config import ModelConfig, ProxyConfig

log = logging.getLogger("llmctl.proxy")

RUNNING = "RUNNING"
_PATH = re.compile(r"^/v1(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Hop-by-hop headers and those the ASGI server sets itself.
_DROP_UP = {"host", "content-length", "connection", "keep-alive", "authorization",
            "transfer-encoding", "te", "upgrade", "proxy-authorization", "proxy-connection",
            "x-request-id", "accept-encoding"}
_DROP_DOWN = {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server",
              b"x-request-id", b"content-length"}


class Routable(Protocol):
    model: ModelConfig
    state: str
    in_flight: int
    reason: str | None


def error_body(status: int, message: str, *, type_: str | None = None, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    if type_ is None:
        type_ = ("invalid_request_error" if status < 500 else "server_error")
        if status == 429:
            type_ = "rate_limit_error"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error(status: int, message: str, *, headers: dict[str, str] | None = None,
          **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, **kw), status_code=status, headers=headers)


def fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for a key: safe for logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llmctl_requests", "Proxied requests by model and status",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("llmctl_request_duration_seconds", "Request duration",
                                 ["model"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60,
                                          120, 300))
        self.ttfb = Histogram("llmctl_time_to_first_byte_seconds",
                              "Time from request to first upstream byte", ["model"],
                              registry=self.registry,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
                                       10, 30))
        self.in_flight = Gauge("llmctl_requests_in_flight", "Requests being served", ["model"],
                               registry=self.registry)
        self.upstream_errors = Counter("llmctl_upstream_errors", "Failures reaching a backend",
                                       ["model", "kind"], registry=self.registry)


class RequestID:
    """Pure ASGI middleware: every response carries X-Request-ID (the client's if sane)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                value = v.decode("latin-1")
                rid = value if _REQUEST_ID.match(value) else None
                break
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _BodyTooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # also catches chunked bodies with no Content-Length
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


_PROMPT = re.compile(rb'"prompt_tokens":\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens":\s*(\d+)')


def _usage(tail: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the `usage` object at the end of an answer."""
    if b'"usage"' not in tail:
        return None
    p, c = _PROMPT.findall(tail), _COMPLETION.findall(tail)
    return (int(p[-1]), int(c[-1])) if p and c else None


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Upstream(Response):
    """Send the request upstream and pass the answer back; both phases race the client's hang-up."""

    def __init__(self, proxy: Proxy, backend: Routable, path: str, body: bytes,
                 headers: list[tuple[str, str]], rid: str, key_fp: str, t0: float) -> None:
        self.proxy, self.backend, self.path, self.body = proxy, backend, path, body
        self.up_headers, self.rid, self.key_fp, self.t0 = headers, rid, key_fp, t0
        self.status_code = 0
        self.background = None
        self.ttfb: float | None = None
        self.tokens: tuple[int, int] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnect = asyncio.ensure_future(_wait_disconnect(receive))
        work = asyncio.ensure_future(self._serve(send))
        try:
            await asyncio.wait({work, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                # The client left: cancelling closes the upstream stream, so vLLM aborts.
                work.cancel()
                self.status_code = self.status_code or 499
            disconnect.cancel()
            await asyncio.gather(work, disconnect, return_exceptions=True)
            self._finish()
        if work.done() and not work.cancelled() and work.exception():
            raise work.exception()  # type: ignore[misc]

    async def _serve(self, send: Send) -> None:
        p, b = self.proxy, self.backend
        name = b.model.name
        req = p.client.build_request("POST", b.model.upstream + self.path, content=self.body,
                                     headers=self.up_headers)
        try:
            resp = await p.client.send(req, stream=True)
        except httpx.TimeoutException:
            p.metrics.upstream_errors.labels(name, "timeout").inc()
            await self._send_error(send, 504, f"model '{name}' did not answer in time",
                                   code="upstream_timeout")
            return
        except httpx.HTTPError as e:
            p.metrics.upstream_errors.labels(name, "connect").inc()
            await self._send_error(send, 503, f"model '{name}' is not reachable "
                                   f"({type(e).__name__})", code="model_unavailable",
                                   headers={"retry-after": "5"})
            return
        try:
            self.status_code = resp.status_code
            headers = [(k, v) for k, v in resp.headers.raw if k.lower() not in _DROP_DOWN]
            first = True
            prev = last = b""
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": headers})
            async for chunk in resp.aiter_raw():
                if first:
                    self.ttfb = time.perf_counter() - self.t0
                    p.metrics.ttfb.labels(name).observe(self.ttfb)
                    first = False
                prev, last = last, chunk  # `usage` comes at the end; keep only the tail
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.tokens = _usage(prev + last)
        except httpx.TimeoutException:
            p.metrics.upstream_errors.labels(name, "timeout").inc()
        finally:
            await resp.aclose()

    async def _send_error(self, send: Send, status: int, message: str, *,
                          headers: dict[str, str] | None = None, code: str | None = None) -> None:
        self.status_code = status
        r = error(status, message, headers=headers, code=code)
        await send({"type": "http.response.start", "status": status,
                    "headers": r.raw_headers})
        await send({"type": "http.response.body", "body": r.body, "more_body": False})

    def _finish(self) -> None:
        p, name = self.proxy, self.backend.model.name
        self.backend.in_flight -= 1
        p.metrics.in_flight.labels(name).dec()
        dt = time.perf_counter() - self.t0
        p.metrics.requests.labels(name, str(self.status_code)).inc()
        p.metrics.latency.labels(name).observe(dt)
        ttfb = self.ttfb
        prompt, completion = self.tokens or ("-", "-")
        log.info("id=%s key=%s model=%s status=%s ttfb_ms=%s ms=%.1f prompt_tokens=%s "
                 "completion_tokens=%s", self.rid, self.key_fp, name, self.status_code,
                 f"{ttfb * 1000:.1f}" if ttfb is not None else "-", dt * 1000, prompt, completion)


class Proxy:
    def __init__(self, backends: Iterable[Routable], cfg: ProxyConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.backends = list(backends)
        self.cfg = cfg
        self.by_name: dict[str, Routable] = {}
        for b in self.backends:
            for n in b.model.names:
                self.by_name.setdefault(n, b)
        self.keys = [k.encode() for k in cfg.api_keys]
        self.metrics = Metrics()
        self.client = httpx.AsyncClient(
            transport=transport, trust_env=False,
            timeout=httpx.Timeout(cfg.request_timeout, connect=5.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        if not self.keys:
            log.warning("no API keys configured: the proxy accepts every request")

    def authorize(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        """(key fingerprint, None) when allowed, else (None, the 401 answer)."""
        if not self.keys:
            return "-", None
        header = request.headers.get("authorization")
        if not header:
            return None, error(401, "missing Authorization header; send 'Authorization: Bearer "
                               "<key>'", code="invalid_api_key")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, error(401, "malformed Authorization header; expected 'Bearer <key>'",
                               code="invalid_api_key")
        given = token.encode()
        ok = False
        for k in self.keys:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(given, k)
        if not ok:
            return None, error(401, "invalid API key", code="invalid_api_key")
        return fingerprint(token), None

    def states(self) -> dict[str, str]:
        return {b.model.name: b.state for b in self.backends}

    async def forward(self, request: Request, path: str) -> Response:
        t0 = time.perf_counter()
        key_fp, denied = self.authorize(request)
        if denied:
            return denied
        if not _PATH.match(path):  # decoded already: NUL, spaces, `..` never reach a backend
            return error(404, f"no route {path!r}", code="not_found")
        try:
            body = await _read_body(request, self.cfg.max_body_bytes)
        except _BodyTooLarge:
            return error(413, f"request body is larger than {self.cfg.max_body_bytes} bytes",
                         code="request_too_large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error(400, "request body is not valid JSON", code="invalid_json")
        if not isinstance(data, dict):
            return error(400, "request body must be a JSON object", code="invalid_json")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            return error(400, "'model' is required and must be a string", param="model",
                         code="missing_model")
        b = self.by_name.get(model)
        if b is None:
            known = ", ".join(x.model.name for x in self.backends)
            return error(404, f"model '{model}' does not exist; known models: {known}",
                         param="model", code="model_not_found")
        if b.state != RUNNING:
            why = f": {b.reason}" if b.reason else ""
            return error(503, f"model '{b.model.name}' is {b.state.lower()}{why}",
                         headers={"retry-after": "10"}, code="model_not_ready")
        if b.in_flight >= self.cfg.max_queue_per_model:
            return error(429, f"model '{b.model.name}' has {b.in_flight} requests queued; "
                         "try again shortly", headers={"retry-after": "1"}, code="queue_full")
        if model != b.model.name:  # an alias: the backend knows only the served name
            data["model"] = b.model.name
            body = json.dumps(data).encode()
        rid = request.state.request_id
        headers = [(k, v) for k, v in request.headers.items() if k not in _DROP_UP]
        headers.append(("x-request-id", rid))
        b.in_flight += 1
        self.metrics.in_flight.labels(b.model.name).inc()
        return Upstream(self, b, path, body, headers, rid, key_fp or "-", t0)


def create_app(backends: Iterable[Routable], cfg: ProxyConfig, *,
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    proxy = Proxy(backends, cfg, transport=transport)
    app = FastAPI(title="llmctl", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.proxy = proxy

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        states = proxy.states()
        ok = any(s == RUNNING for s in states.values())
        return JSONResponse({"ready": ok, "models": states}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(proxy.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _, denied = proxy.authorize(request)
        if denied:
            return denied
        return JSONResponse({"object": "list", "data": [
            {"id": b.model.name, "object": "model", "created": 0, "owned_by": "llmctl",
             "aliases": list(b.model.names[1:]), "state": b.state}
            for b in proxy.backends]})

    @app.post("/v1/{path:path}")
    async def v1(request: Request, path: str) -> Response:
        return await proxy.forward(request, "/v1/" + path)

    if cfg.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins),
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["x-request-id"])
    app.add_middleware(RequestID)
    return app
