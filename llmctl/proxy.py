"""The gateway: auth, route by `model`, pass bytes through, report health and metrics.

May import: config, fim, keys, lifecycle, limits, upstream, usage (and fastapi,
prometheus_client). Knows backends only
through the small `Routable` shape (a model, a state, an in-flight counter), so
tests drive it with plain objects and a local upstream.

Bytes are passed through untouched: the request body (unless an alias has to be
rewritten to the served name), the response status, headers and body, SSE chunks
as they arrive. A client that hangs up closes the upstream request, which makes
vLLM abort the generation.

Speed: `POST /v1/*` is served by a bare ASGI handler and forwarded by upstream.py; an
event stream is spliced (`_Exchange._splice`): each upstream socket read is written to
the client's transport from the socket callback, no task or ASGI message per event;
FastAPI serves the rest (/health, /ready, /metrics, /v1/models). `Proxy` is the
whole ASGI app, built complete by its constructor; it names each request once
(X-Request-ID) before either path sees it. Measured with
tests/perf/bench_proxy.py (numbers in CHANGELOG.md): FastAPI routing + httpx added
2.2 ms p50 per request and kept 24 % of direct streaming throughput.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

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

from . import fim
from . import keys as keymod
from .config import ModelConfig, ProxyConfig
from .lifecycle import NotServing, State
from .limits import Limits
from .upstream import Pool, UpstreamError, UpstreamTimeout
from .usage import Tally
from .usage import summary as usage_summary

log = logging.getLogger("llmctl.proxy")
_PATH = re.compile(r"^/v1(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$")
# vLLM's own model-addressed routes outside /v1, routed by `model` like the rest, and
# llama.cpp server's /infill (tab completion in llama.vscode-style plugins), mapped to FIM.
_ROOT_ROUTES = ("/tokenize", "/detokenize", "/infill")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Request headers not forwarded: hop-by-hop, the client's key, what upstream.py sets itself.
_DROP_UP = {b"host", b"content-length", b"connection", b"keep-alive", b"authorization",
            b"transfer-encoding", b"te", b"upgrade", b"proxy-authorization",
            b"proxy-connection", b"x-request-id", b"accept-encoding", b"expect"}
# Response headers not passed back: hop-by-hop and those the ASGI server sets.
_DROP_DOWN = {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server",
              b"x-request-id", b"content-length"}
_JSON = [(b"content-type", b"application/json")]
_NOT_OPTIONS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}  # OPTIONS: CORS preflights


class Routable(Protocol):
    model: ModelConfig
    fim: str | None  # the FIM template family, or None when the model takes no FIM
    state: str
    in_flight: int
    reason: str | None
    last_request_at: float | None  # wall time of the last request, for idle stops


class Control(Protocol):
    """What starts and stops backends (the supervisor); optional: without it a backend
    that is not RUNNING gets 503."""

    async def demand(self, b: Any, wait: bool = True) -> None: ...
    def expected_wait(self, b: Any) -> float: ...
    def start_by_hand(self, b: Any) -> None: ...
    async def stop_by_hand(self, b: Any) -> None: ...


_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)")


def prefer_wait(scope: Scope) -> float | None:
    """RFC 7240's `Prefer: wait=N`: the seconds a client will wait for a model to start
    (0: answer at once); None when it did not say."""
    for k, v in scope["headers"]:
        if k == b"prefer" and (m := _WAIT.search(v.decode("latin-1").lower())):
            return float(m.group(1))
    return None


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


def ipaddress_is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def request_id(scope: Scope) -> str:
    for k, v in scope["headers"]:
        if k == b"x-request-id":
            value = v.decode("latin-1")
            return value if _REQUEST_ID.match(value) else uuid.uuid4().hex
    return uuid.uuid4().hex


class Caller:
    """Who sent a request: a named key (with its limits and models), an admin key from
    the config, or anyone (no keys at all)."""

    __slots__ = ("name", "key", "limits", "allowed", "admin", "log")

    def __init__(self, name: str, key: keymod.Key | None = None, limits: Limits | None = None,
                 allowed: frozenset[int] | None = None, admin: bool = False,
                 log: str | None = None) -> None:
        self.name, self.key, self.limits, self.allowed, self.admin = \
            name, key, limits, allowed, admin
        self.log = log or name  # in the request log: the name, or an admin key's fingerprint

    def may_use(self, b: Any) -> bool:
        return self.allowed is None or id(b) in self.allowed


ANYONE = Caller("-", admin=True)


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
        # Per key: its name (never the key), "admin" for the config's keys.
        self.key_requests = Counter("llmctl_key_requests", "Requests by key, model and status",
                                    ["key", "model", "status"], registry=self.registry)
        self.key_tokens = Counter("llmctl_key_tokens", "Tokens by key, model and kind",
                                  ["key", "model", "kind"], registry=self.registry)
        self._children: dict[tuple[str, str], Any] = {}

    def child(self, metric: str, *labels: str) -> Any:
        """Cached label children: `labels()` costs microseconds on every request otherwise."""
        key = (metric, *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = getattr(self, metric).labels(*labels)
        return c


def _stamped(send: Send, rid: str) -> Send:
    """`send`, adding X-Request-ID to the response's headers (for answers made by FastAPI
    or the CORS middleware; the forwarding path adds it itself, with no wrapper per chunk)."""
    header = (b"x-request-id", rid.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header]
        await send(message)

    return send_with_id


class _Gone(Exception):
    """The client left while sending its request: nobody is left to answer."""


class _Refused(Exception):
    """A request answered by the proxy itself, before any backend is involved."""

    def __init__(self, status: int, message: str, code: str, *, param: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status, self.message, self.code = status, message, code
        self.param, self.headers = param, headers or []


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


class Proxy:
    """The ASGI app: `POST /v1/*` on a bare fast path, the rest through FastAPI; CORS
    around both when origins are configured."""

    def __init__(self, backends: Iterable[Routable], cfg: ProxyConfig,
                 status: Any = None, control: Control | None = None,
                 keys_path: Any = None) -> None:
        self.backends = list(backends)
        self.cfg = cfg
        self.control = control
        self.keys_path = keys_path  # the named keys' file (keys.py); None: config keys only
        self._named: dict[str, Caller] = {}  # digest → caller
        self._keys_seen: tuple[float, int] | None = None
        self.tally = Tally()  # usage per key and model, written to SQLite by the daemon
        self.reload_keys()
        # `url` models with an `api_key`: sent upstream in place of the client's key.
        self._up_auth = {id(b): (b"authorization", b"Bearer " + b.model.api_key.encode())
                         for b in self.backends if getattr(b.model, "api_key", "")}
        self.by_name: dict[str, Routable] = {}
        for b in self.backends:
            for n in b.model.names:
                self.by_name.setdefault(n, b)
        self.keys = [k.encode() for k in cfg.api_keys]
        self._admins = [Caller(keymod.ADMIN, admin=True, log=fingerprint(k))
                        for k in cfg.api_keys]
        self.metrics = Metrics()
        self.status = status  # () -> the data of `llmctl status --json`, for /api/status
        # Totals for the page's charts (requests/s, tokens/s): two integers, no lock needed.
        self.counters = {"requests": 0, "tokens": 0}
        self._pool: Pool | None = None
        api: Any = self._api_app()
        forward: Any = self.forward
        if cfg.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            cors = {"allow_origins": list(cfg.cors_origins), "allow_methods": ["*"],
                    "allow_headers": ["*"], "expose_headers": ["x-request-id"]}
            # Preflights are OPTIONS: they take the API path and are answered by CORS there.
            api, forward = CORSMiddleware(api, **cors), CORSMiddleware(forward, **cors)
        self._api, self._forward = api, forward
        if not self.keys and not self._named:
            log.warning("no API keys configured: the proxy accepts every request")

    # ── plumbing ──
    def pool(self) -> Pool:
        if self._pool is None:  # created on first use, inside the serving loop
            self._pool = Pool(read_timeout=self.cfg.request_timeout)
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def reload_keys(self) -> bool:
        """Read the key file again if it changed (the daemon asks once a second); True when
        it did. A key whose limits did not change keeps its counts."""
        if self.keys_path is None:
            return False
        try:
            st = self.keys_path.stat()
            seen: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._keys_seen:
            return False
        try:
            found = keymod.load(self.keys_path) if seen else {}
        except Exception as e:  # a broken file: keep serving with the keys we have
            log.error("%s: %s; keeping the keys read before", self.keys_path, e)
            return False
        self._keys_seen = seen
        old = {c.name: c for c in self._named.values()}
        now = time.monotonic()
        named = {}
        for k in found.values():
            prev = old.get(k.name)
            same = prev is not None and prev.key is not None and \
                (prev.key.rpm, prev.key.tpm, prev.key.max_concurrent) == \
                (k.rpm, k.tpm, k.max_concurrent)
            limits = prev.limits if same else (
                Limits(k.rpm, k.tpm, k.max_concurrent, now)
                if (k.rpm or k.tpm or k.max_concurrent) else None)
            allowed = frozenset(id(b) for b in self.backends
                                if any(n in k.models for n in b.model.names)) \
                if k.models else None
            named[k.digest] = Caller(k.name, k, limits, allowed)
        self._named = named
        log.info("named keys: %s", ", ".join(c.name for c in named.values()) or "none")
        return True

    @property
    def counting(self) -> bool:
        """Whether usage is counted per key: when there are named keys."""
        return bool(self._named)

    def check_key(self, header: bytes | None) -> Caller:
        """Who is calling; raises _Refused(401) for a missing, wrong or expired key."""
        if not self.keys and not self._named:
            return ANYONE
        if not header:
            raise _Refused(401, "missing Authorization header; send 'Authorization: Bearer "
                           "<key>'", "invalid_api_key")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise _Refused(401, "malformed Authorization header; expected 'Bearer <key>'",
                           "invalid_api_key")
        admin = None
        for k, c in zip(self.keys, self._admins, strict=True):
            # No early exit: the time taken does not depend on which key matched.
            if hmac.compare_digest(token, k):
                admin = c
        # Named keys by their SHA-256: what the lookup's time could tell is about a digest
        # of 256 random bits, not about any key.
        named = self._named.get(hashlib.sha256(token).hexdigest())
        if admin is not None:
            return admin
        if named is None:
            raise _Refused(401, "invalid API key", "invalid_api_key")
        if named.key is not None and named.key.expired():
            raise _Refused(401, f"the key '{named.name}' expired on "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(named.key.expires))}",
                           "expired_api_key")
        return named

    def states(self) -> dict[str, str]:
        return {b.model.name: str(b.state) for b in self.backends}

    # ── ASGI ──
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._api(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        path, method = scope["path"], scope["method"]
        forwarded = path.startswith("/v1/") or path in _ROOT_ROUTES
        models = path == "/v1/models" or path.startswith("/v1/models/")
        if method == "POST" and forwarded and not models:
            await self._forward(scope, receive, send)
        elif forwarded and method in _NOT_OPTIONS and (method != "GET" or not models) and \
                (method != "POST" or models):
            # A route that exists, asked with the wrong method: 405 and what it takes.
            allow = b"GET" if models else b"POST"
            await _send_json(send, 405, error_body(
                405, f"{path} takes {allow.decode()}, not {method}", code="method_not_allowed"),
                [(b"allow", allow), (b"x-request-id", rid.encode())])
        else:
            await self._api(scope, receive, _stamped(send, rid))

    def _api_app(self) -> Any:
        """FastAPI for everything but forwarding: /health, /ready, /metrics, /v1/models."""
        api = FastAPI(title="llmctl", docs_url=None, redoc_url=None, openapi_url=None)

        @api.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

        @api.get("/health")
        async def health() -> JSONResponse:
            return JSONResponse({"status": "ok"})

        @api.get("/ready")
        async def ready() -> JSONResponse:
            states = self.states()
            ok = any(s == State.RUNNING for s in states.values())
            return JSONResponse({"ready": ok, "models": states}, status_code=200 if ok else 503)

        def who(request: Request) -> Caller | JSONResponse:
            try:
                return self.check_key(
                    request.headers.get("authorization", "").encode("latin-1") or None)
            except _Refused as r:
                return error(r.status, r.message, code=r.code)

        def denied(request: Request) -> JSONResponse | None:
            c = who(request)
            return c if isinstance(c, JSONResponse) else None

        @api.get("/metrics")
        async def metrics(request: Request) -> Response:
            # Open to scrapers on this machine; from elsewhere (host = "0.0.0.0") it takes a key.
            client = request.client.host if request.client else ""
            if not ipaddress_is_loopback(client) and (refusal := denied(request)):
                return refusal
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @api.get("/api/status")
        async def api_status(request: Request) -> JSONResponse:
            c = who(request)
            if isinstance(c, JSONResponse):
                return c
            data = await asyncio.to_thread(self.status) if self.status else {"backends": {}}
            if self.keys_path is not None:  # usage per key: a named key sees its own
                used = await asyncio.to_thread(usage_summary)
                data = {**data, "usage": used if c.admin else
                        {k: v for k, v in used.items() if k == c.name}}
            if c.allowed is not None:  # a key limited to some models sees only those
                mine = {b.model.key for b in self.backends if c.may_use(b)}
                data = {**data, "backends": {k: v for k, v in data.get("backends", {}).items()
                                             if k in mine}}
            return JSONResponse({**data, "proxy_counters": dict(self.counters)})

        if self.cfg.web:
            self._web_routes(api)

        def entry(b: Routable) -> dict[str, Any]:
            # What the server said of itself (vLLM: root, max_model_len), then llmctl's own.
            return {**getattr(b, "served", {}),
                    "id": b.model.name, "object": "model", "created": 0, "owned_by": "llmctl",
                    "aliases": list(b.model.names[1:]), "state": str(b.state),
                    "start": b.model.start if b.model.managed else None,
                    "group": b.model.group or None, "fim": getattr(b, "fim", None)}

        @api.post("/api/models/{name:path}/{action}")
        async def control(name: str, action: str, request: Request) -> JSONResponse:
            # `llmctl start|stop MODEL`: from this machine only, with a key when keys are set.
            client = request.client.host if request.client else ""
            if not ipaddress_is_loopback(client):
                return error(403, "models are started and stopped from the machine that "
                             "runs llmctl", code="forbidden")
            c = who(request)
            if isinstance(c, JSONResponse):
                return c
            if not c.admin:
                return error(403, f"the key '{c.name}' may not start or stop models; the "
                             "config's api_keys may", code="forbidden")
            if action not in ("start", "stop"):
                return error(404, f"no action {action!r}; start or stop", code="not_found")
            if self.control is None:
                return error(501, "this proxy does not start or stop models",
                             code="not_supported")
            try:
                b = self._backend(name)
                if action == "start":
                    self.control.start_by_hand(b)
                else:
                    await self.control.stop_by_hand(b)
            except _Refused as r:
                return error(r.status, r.message, code=r.code, param=r.param)
            except NotServing as e:
                return error(e.status, e.message, code=e.code)
            return JSONResponse({"model": b.model.name, "state": str(b.state)},
                                status_code=202 if action == "start" else 200)

        @api.get("/v1/models")
        async def models(request: Request) -> JSONResponse:
            c = who(request)
            if isinstance(c, JSONResponse):
                return c
            return JSONResponse({"object": "list", "data": [entry(b) for b in self.backends
                                                            if c.may_use(b)]})

        @api.get("/v1/models/{name:path}")
        async def model(name: str, request: Request) -> JSONResponse:
            # What the openai SDK's models.retrieve() asks; a name or an alias.
            c = who(request)
            if isinstance(c, JSONResponse):
                return c
            try:
                return JSONResponse(entry(self._backend(name, c)))
            except _Refused as r:
                return error(r.status, r.message, code=r.code, param=r.param)

        return api

    def _web_routes(self, api: Any) -> None:
        """The page: three files from the package's web/ folder, named here one by one, so
        no path from a request ever reaches the filesystem."""
        from importlib.resources import files

        web = files("llmctl") / "web"
        pages = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                 "/static/app.css": ("app.css", "text/css; charset=utf-8")}
        body = {route: (web / name).read_bytes() for route, (name, _) in pages.items()}
        headers = {
            "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                       "connect-src 'self'; img-src 'self' blob: data:; "
                                       "base-uri 'none'; form-action 'none'; "
                                       "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

        def serve(route: str) -> Any:
            async def page() -> Response:
                return Response(body[route], media_type=pages[route][1], headers=headers)
            return page

        for route in pages:
            api.add_api_route(route, serve(route), methods=["GET"], include_in_schema=False)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.cfg.max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise _Refused(413, f"request body is larger than {limit} bytes",
                               "request_too_large")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # also catches chunked bodies with no Content-Length
                raise _Refused(413, f"request body is larger than {limit} bytes",
                               "request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _route(self, body: bytes, path: str = "", caller: Caller = ANYONE
               ) -> tuple[Routable, bytes, str, Any, bool, bool]:
        """The backend, the body to send, the path to send it to, how to turn the answer
        back (None: passed through untouched), whether it must start first, and whether
        the stream's usage chunk was added here (and is taken out of the answer)."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, "request body is not valid JSON", "invalid_json") from None
        if not isinstance(data, dict):
            raise _Refused(400, "request body must be a JSON object", "invalid_json")
        if path == "/infill" and not data.get("model"):
            data["model"] = self._infill_model()
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise _Refused(400, "'model' is required and must be a string", "missing_model",
                           param="model")
        b = self._backend(model, caller)
        must_start = self._must_start(b)
        if b.in_flight >= self.cfg.max_queue_per_model:
            raise _Refused(429, f"model '{b.model.name}' has {b.in_flight} requests queued; "
                           "try again shortly", "queue_full", headers=[(b"retry-after", b"1")])
        if path == "/infill" or (path == "/v1/completions" and data.get("suffix") is not None):
            return (*self._fim(b, data, path), must_start, False)
        rewrite = model != b.model.name  # an alias: the backend knows only the served name
        data["model"] = b.model.name
        added = False
        if self.counting and data.get("stream") is True:
            # Tokens are counted from `usage`, which a stream carries only when asked for.
            opts = data.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                data["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                          "include_usage": True}
                added = rewrite = True
        if rewrite:
            body = json.dumps(data).encode()
        return b, body, path, None, must_start, added

    def _must_start(self, b: Routable) -> bool:
        """False when `b` serves now; True when a request may start it (and waits);
        a 503 otherwise."""
        if b.state == State.RUNNING and not getattr(b, "draining", False):
            return False
        if self.control is not None and getattr(b, "demandable", False) \
                and b.state != State.FATAL:
            return True
        why = f": {b.reason}" if b.reason else ""
        if b.state == State.FATAL:  # it will not come back by itself: no Retry-After
            again = f"; `llmctl start {b.model.key}` tries again" if b.model.managed else ""
            raise _Refused(503, f"model '{b.model.name}' has failed{why}{again}",
                           "model_failed")
        raise _Refused(503, f"model '{b.model.name}' is {b.state.lower()}{why}",
                       "model_not_ready", headers=[(b"retry-after", b"10")])

    async def _start_for(self, b: Routable, scope: Scope, disconnect: Any) -> _Refused | None:
        """Wait for `b` to start (the control starts it, or joins the start under way),
        bounded by request_timeout or the client's `Prefer: wait=N`; a refusal to send
        instead when it cannot. Raises _Gone when the client leaves meanwhile."""
        assert self.control is not None
        asked = prefer_wait(scope)
        limit = self.cfg.request_timeout if asked is None else min(asked,
                                                                   self.cfg.request_timeout)
        try:
            if limit <= 0:
                await self.control.demand(b, False)
                return None
            demand = asyncio.ensure_future(self.control.demand(b, True))
            done, _ = await asyncio.wait({demand, disconnect}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
            if demand in done:
                demand.result()
                return None
            demand.cancel()  # this request stops waiting; the start goes on
            await asyncio.gather(demand, return_exceptions=True)
            if disconnect in done:
                raise _Gone
            eta = self.control.expected_wait(b)
            return _Refused(503, f"model '{b.model.name}' is still starting after {limit:.0f} s",
                            "model_not_ready", headers=[(b"retry-after", b"%d" % eta)])
        except NotServing as e:
            headers = [(b"retry-after", b"%d" % math.ceil(e.retry_after))] \
                if e.retry_after else []
            return _Refused(e.status, e.message, e.code, headers=headers)

    def _backend(self, name: str, caller: Caller = ANYONE) -> Routable:
        """The backend a name or an alias names; a 404 that lists the known ones (those
        the caller's key may use)."""
        b = self.by_name.get(name)
        if b is None or not caller.may_use(b):
            known = ", ".join(x.model.name for x in self.backends if caller.may_use(x))
            raise _Refused(404, f"model '{name}' does not exist; known models: {known}",
                           "model_not_found", param="model")
        return b

    def _infill_model(self) -> str:
        """/infill names no model: the one that takes FIM (the coder when several do)."""
        able = [b for b in self.backends if b.fim]
        if not able:
            raise _Refused(400, "no model here takes fill-in-the-middle; set `fim` (deepseek, "
                           "starcoder, qwen, codellama or codestral) on a model in the config",
                           "fim_not_supported")
        return next((b for b in able if b.model.key == "coder"), able[0]).model.name

    def _fim(self, b: Routable, data: dict[str, Any], path: str
             ) -> tuple[Routable, bytes, str, Any]:
        """Render the model's FIM template into a plain completion (vLLM refuses `suffix`)."""
        if not b.fim:
            raise _Refused(400, f"model '{b.model.name}' has no fill-in-the-middle template, "
                           f"so it cannot take 'suffix'; set `fim = \"deepseek\"` (or "
                           f"starcoder, qwen, codellama, codestral) in [models.{b.model.key}]",
                           "fim_not_supported", param="suffix")
        try:
            if path == "/infill":
                out = fim.infill(data, b.model.name, b.fim)
                answer: Any = _InfillAnswer(b.model.name, bool(out.get("stream")))
            else:
                out, answer = fim.completion({**data, "model": b.model.name}, b.fim), None
        except fim.FimError as e:
            raise _Refused(400, str(e), "invalid_fim_request") from None
        return b, json.dumps(out).encode(), "/v1/completions", answer

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        rid = scope["state"]["request_id"]
        id_header = [(b"x-request-id", rid.encode())]
        path = scope["path"]
        auth = None
        up_headers = [(b"x-request-id", rid.encode())]
        typed = False
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k not in _DROP_UP:
                typed = typed or k == b"content-type"
                up_headers.append((k, v))
        if not typed:  # the body is checked to be JSON below; say so, as vLLM expects
            up_headers.append((b"content-type", b"application/json"))
        caller, routed = ANYONE, "-"
        try:
            caller = self.check_key(auth)
            if not (_PATH.match(path) or path in _ROOT_ROUTES):  # NUL, `..` never reach a backend
                raise _Refused(404, f"no route {path!r}", "not_found")
            body = await self._read_body(scope, receive)
            backend, body, path, answer, must_start, strip = self._route(body, path, caller)
            routed = backend.model.name
            limits = caller.limits
            if limits is not None and (over := limits.admit(time.monotonic())):
                what, wait = over
                raise _Refused(429, f"rate limit of the key '{caller.name}': {what}; try "
                               f"again in {math.ceil(wait)} s", "rate_limit_exceeded",
                               headers=[(b"retry-after", b"%d" % math.ceil(wait)),
                                        (b"retry-after-ms", b"%d" % math.ceil(wait * 1000)),
                                        *limits.headers(time.monotonic())])
        except _Refused as r:
            await _send_json(send, r.status, error_body(r.status, r.message, param=r.param,
                                                        code=r.code), r.headers + id_header)
            if caller is not ANYONE:  # a key's refusals (429, 404…) count as its errors
                self.tally.add(caller.name, routed, True, 0, 0, time.time())
                self.metrics.child("key_requests", caller.name, routed, str(r.status)).inc()
            return
        except _Gone:
            return
        name = backend.model.name
        if self._up_auth and (up_auth := self._up_auth.get(id(backend))):
            up_headers.append(up_auth)
        backend.in_flight += 1  # waiting for a start included: the queue limit counts it
        m = self.metrics
        m.child("in_flight", name).inc()
        ex = _Exchange(self, backend, rid, caller, t0)
        ex.strip, ex.limits = strip, limits
        if limits is not None:
            id_header = [*limits.headers(time.monotonic()), *id_header]
        disconnect = asyncio.ensure_future(_wait_disconnect(receive))
        work: asyncio.Future[None] | None = None
        try:
            if must_start:
                refusal = await self._start_for(backend, scope, disconnect)
                if refusal is not None:
                    ex.status = refusal.status
                    await _send_json(send, refusal.status, error_body(
                        refusal.status, refusal.message, code=refusal.code),
                        refusal.headers + id_header)
                    return
            backend.last_request_at = time.time()
            work = asyncio.ensure_future(ex.run(backend.model.upstream, path.encode(), body,
                                                up_headers, id_header, send, answer))
            await asyncio.wait({work, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        except _Gone:
            ex.status = 499
        finally:
            if work is not None and not work.done():
                # The client left: cancelling closes the upstream connection, so vLLM aborts.
                work.cancel()
                ex.status = ex.status or 499
            disconnect.cancel()
            await asyncio.gather(*(f for f in (work, disconnect) if f is not None),
                                 return_exceptions=True)
            backend.in_flight -= 1
            backend.last_request_at = time.time()
            m.child("in_flight", name).dec()
            ex.finish()
        if work is not None and not work.cancelled() and work.exception():
            raise work.exception()  # type: ignore[misc]


def _openai_error(status: int, raw: bytes, model: str) -> bytes:
    """`raw` when it is an OpenAI error already; else the same news in that shape."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict) and \
            "message" in obj["error"]:
        return raw
    if isinstance(obj, dict) and obj.get("object") == "error" and "message" in obj:
        # vLLM's older flat shape
        return json.dumps({"error": {k: obj.get(k) for k in ("message", "type", "param",
                                                              "code")}}).encode()
    detail = obj.get("detail") if isinstance(obj, dict) else None
    text = detail if isinstance(detail, str) else (
        json.dumps(detail) if detail is not None else raw.decode("utf-8", "replace").strip())
    if status == 404 and text == "Not Found":
        text = "the backend has no such route (this model may not serve this kind of request)"
    return json.dumps(error_body(status, f"model '{model}': {text or f'HTTP {status}'}",
                                 code=str(status))).encode()


def _spliceable(cycle: Any, resp: Any) -> bool:
    """Whether an answer can go the splice way: an event stream to a client served by
    uvicorn's httptools protocol with chunked encoding (anything else takes the ASGI
    loop, which works everywhere)."""
    return (type(cycle).__name__ == "RequestResponseCycle"
            and getattr(cycle, "chunked_encoding", None) is True
            and not getattr(cycle, "response_complete", True)
            and hasattr(cycle, "transport") and hasattr(cycle, "flow")
            and any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in resp.headers))


class _UsageStripper:
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


class _InfillAnswer:
    """OpenAI completion bytes in, llama.cpp /infill bytes out: the whole JSON answer, or
    each SSE event of a stream."""

    def __init__(self, model: str, stream: bool) -> None:
        self.model, self.stream = model, stream
        self.content_type = b"text/event-stream" if stream else b"application/json"
        self.buf = b""

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk
        if not self.stream:
            return b""
        *events, self.buf = self.buf.split(b"\n\n")
        out = []
        for ev in events:
            data = ev.strip().removeprefix(b"data:").strip()
            if not data or data == b"[DONE]":
                continue
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            out.append(b"data: " + json.dumps(fim.infill_answer(msg, self.model)).encode()
                       + b"\n\n")
        return b"".join(out)

    def close(self) -> bytes:
        if self.stream:
            return self.feed(b"\n\n")
        try:
            return json.dumps(fim.infill_answer(json.loads(self.buf), self.model)).encode()
        except ValueError:
            return self.buf


async def _send_json(send: Send, status: int, obj: Any,
                     headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class _Exchange:
    """One upstream request and its answer, streamed back."""

    def __init__(self, proxy: Proxy, backend: Routable, rid: str, caller: Caller,
                 t0: float) -> None:
        self.proxy, self.backend, self.rid, self.caller, self.t0 = proxy, backend, rid, caller, t0
        self.strip = False  # take out the usage chunk llmctl asked for
        self.limits: Limits | None = None  # the limits that admitted it, told when it ends
        self.status = 0
        self.ttfb: float | None = None
        self.tokens: tuple[int, int] | None = None

    async def run(self, base: str, path: bytes, body: bytes,
                  headers: list[tuple[bytes, bytes]], id_header: list[tuple[bytes, bytes]],
                  send: Send, answer: Any = None) -> None:
        p, name = self.proxy, self.backend.model.name
        m = p.metrics
        try:
            resp = await p.pool().post(base, path, headers, body)
        except UpstreamTimeout:
            m.child("upstream_errors", name, "timeout").inc()
            self.status = 504
            await _send_json(send, 504, error_body(504, f"model '{name}' did not answer in time",
                                                   code="upstream_timeout"), id_header)
            return
        except UpstreamError as e:
            m.child("upstream_errors", name, "connect").inc()
            self.status = 503
            await _send_json(send, 503, error_body(
                503, f"model '{name}' is not reachable ({e})", code="model_unavailable"),
                [(b"retry-after", b"5"), *id_header])
            return
        if resp.status >= 400 and answer is None:
            return await self._error(resp, id_header, send)
        if answer is not None and resp.status == 200:
            return await self._translate(resp, answer, id_header, send)
        try:
            self.status = resp.status
            headers_out = [(k.lower(), v) for k, v in resp.headers
                           if k.lower() not in _DROP_DOWN]
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": headers_out + id_header})
            prev = last = b""
            first = True
            stripper = _UsageStripper() if self.strip and resp.status == 200 else None
            cycle = getattr(send, "__self__", None)
            if stripper is None and _spliceable(cycle, resp):
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
                if stripper is not None and not (chunk := stripper.feed(chunk)):
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body",
                        "body": stripper.close() if stripper is not None else b""})
            self.tokens = _usage(prev + last)
        except UpstreamError:
            # Mid-answer: the status line is gone; closing the stream is all that is left.
            m.child("upstream_errors", name, "midstream").inc()
        finally:
            resp.close()  # kept alive when read whole; cut otherwise, so vLLM aborts

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
        body = _openai_error(resp.status, raw, self.backend.model.name)
        headers = [(k.lower(), v) for k, v in resp.headers if k.lower() not in _DROP_DOWN]
        if body is not raw:
            headers = [(k, v) for k, v in headers if k != b"content-type"] + _JSON
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
                self.proxy.metrics.child("ttfb", self.backend.model.name).observe(self.ttfb)
            tail[0], tail[1] = tail[1], data
            if transport.is_closing():
                return False  # the client left: the disconnect watch cancels this exchange
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            return flow.write_paused

        resp.splice(sink)
        while not await resp.wait():
            await flow.drain()
            resp.resume()
        await send({"type": "http.response.body", "body": b""})
        self.tokens = _usage(tail[0] + tail[1])

    async def _translate(self, resp: Any, answer: Any, id_header: list[tuple[bytes, bytes]],
                         send: Send) -> None:
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
                if out := answer.feed(chunk):
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": answer.close()})
            self.tokens = _usage(tail)
        except UpstreamError:
            self.proxy.metrics.child("upstream_errors", self.backend.model.name,
                                     "midstream").inc()
        finally:
            resp.close()

    def finish(self) -> None:
        m, name = self.proxy.metrics, self.backend.model.name
        dt = time.perf_counter() - self.t0
        m.child("requests", name, str(self.status)).inc()
        c = self.caller
        prompt_n, completion_n = self.tokens or (0, 0)
        if self.limits is not None:
            self.limits.done(time.monotonic(), prompt_n + completion_n)
        if c is not ANYONE:
            self.proxy.tally.add(c.name, name, not 200 <= self.status < 400, prompt_n,
                                 completion_n, time.time())
            m.child("key_requests", c.name, name, str(self.status)).inc()
            if self.tokens:
                m.child("key_tokens", c.name, name, "prompt").inc(prompt_n)
                m.child("key_tokens", c.name, name, "completion").inc(completion_n)
        counters = self.proxy.counters
        counters["requests"] += 1
        if self.tokens:
            counters["tokens"] += self.tokens[1]
        m.child("latency", name).observe(dt)
        prompt, completion = self.tokens or ("-", "-")
        log.info("id=%s key=%s model=%s status=%s ttfb_ms=%s ms=%.1f prompt_tokens=%s "
                 "completion_tokens=%s", self.rid, self.caller.log, name, self.status,
                 f"{self.ttfb * 1000:.1f}" if self.ttfb is not None else "-", dt * 1000,
                 prompt, completion)
