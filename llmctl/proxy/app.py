"""`Proxy`, the whole ASGI app: names each request once (X-Request-ID), then hands it to
the forwarding path or the FastAPI side; CORS around both when origins are configured.

May import: clock, config, proxy.answers, proxy.api, proxy.callers, proxy.forward,
proxy.history, proxy.metrics, proxy.models. Built complete by its constructor from the
backends, the proxy's config and the supervisor (`control`); tests pass plain objects
for backends and a `Supervisor` over them. `history` is the status view's ring: whoever
runs the proxy (the daemon) calls its `sample` every `interval_s`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from ..clock import Clock
from ..config import ProxyConfig
from .answers import anthropic_path, error_body, send_json
from .api import build
from .callers import Callers
from .forward import ROOT_ROUTES, Forwarder, by_response_id
from .history import History
from .metrics import Ledger
from .models import Control, Models, Routable

log = logging.getLogger("llmctl.proxy")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_NOT_OPTIONS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}  # OPTIONS: CORS preflights
_SAFE = {"GET", "HEAD", "OPTIONS"}
# The POST routes vLLM serves under /v1 (and the proxy's /v1/models): a GET there is a 405
# that names the method; any other path is a 404.
KNOWN = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                   "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
                   "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/score",
                   "/v1/rerank", "/v1/pooling", "/v1/classify", *ROOT_ROUTES})


def request_id(scope: Scope) -> str:
    for k, v in scope["headers"]:
        if k == b"x-request-id":
            value = v.decode("latin-1")
            return value if _REQUEST_ID.match(value) else uuid.uuid4().hex
    return uuid.uuid4().hex


def _stamped(send: Send, rid: str) -> Send:
    """`send`, adding X-Request-ID to the response's headers (for answers made by FastAPI
    or the CORS middleware; the forwarding path adds it itself, with no wrapper per chunk)."""
    header = (b"x-request-id", rid.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header]
        await send(message)

    return send_with_id


class Proxy:
    """The ASGI app: `POST /v1/*` on a bare fast path, the rest through FastAPI."""

    def __init__(self, backends: Iterable[Routable], cfg: ProxyConfig, control: Control, *,
                 status: Callable[[], dict[str, Any]] | None = None,
                 keys_path: Path | None = None, clock: Clock | None = None,
                 machine: Callable[[], str] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.models = Models(backends)
        self.callers = Callers(cfg.api_keys, keys_path, self.models.all, self.clock)
        self.ledger = Ledger()
        self.forwarder = Forwarder(cfg, self.models, self.callers, control, self.ledger,
                                   self.clock)
        # For the backends' /metrics, merged into the proxy's (proxy/federate.py).
        self._http = httpx.AsyncClient(trust_env=False)
        for b in self.models.all:  # known in advance: at 0 from the first scrape
            if b.model.managed:
                self.ledger.metrics.child("scrape_failures", b.model.name)
        names = [b.model.name for b in self.models.all]
        self.ledger.metrics.prime(names, self.callers.names())
        # A key added later has its series at once (a removed key's stay: counters do not
        # go back).
        self.callers.on_change = lambda: self.ledger.metrics.prime([], self.callers.names())
        self.history = History(self.models, self.ledger.metrics.registry, clock=self.clock,
                               status=status, machine=machine, http=self._http)
        api: Any = build(models=self.models, callers=self.callers, control=control,
                         ledger=self.ledger, web=cfg.web, status=status,
                         open_metrics=cfg.open_metrics, http=self._http, machine=machine,
                         history=self.history.answer)
        forward: Any = self.forwarder
        if cfg.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            cors = {"allow_origins": list(cfg.cors_origins), "allow_methods": ["*"],
                    "allow_headers": ["*"], "expose_headers": ["x-request-id"]}
            # Preflights are OPTIONS: they take the API path and are answered by CORS there.
            api, forward = CORSMiddleware(api, **cors), CORSMiddleware(forward, **cors)
        self._api, self._forward = api, forward
        self._origins = {o.encode() for o in cfg.cors_origins}
        if self.callers.open:
            log.warning("no API keys configured: the proxy accepts every request")

    async def aclose(self) -> None:
        await self.forwarder.aclose()
        await self._http.aclose()

    def _same_site(self, scope: Scope) -> bool:
        """No `Origin` (not a browser), this proxy's own origin, or one the config allows."""
        origin = host = None
        for k, v in scope["headers"]:
            if k == b"origin":
                origin = v
            elif k == b"host":
                host = v
        if origin is None or origin in self._origins:
            return True
        return host is not None and origin in (b"http://" + host, b"https://" + host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._api(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        path, method = scope["path"], scope["method"]
        forwarded = path.startswith("/v1/") or path in ROOT_ROUTES
        models = path == "/v1/models" or path.startswith("/v1/models/")
        if method not in _SAFE and not self._same_site(scope):
            # A page on another site may post `text/plain` with no preflight: without keys
            # it would be served (CSRF). Browsers always say where such a post comes from.
            await send_json(send, 403, error_body(
                403, "a request from another site's page; add its origin to cors_origins "
                "in [proxy] to allow it", code="cross_origin", anthropic=anthropic_path(path)),
                [(b"x-request-id", rid.encode())])
        elif (method == "POST" and forwarded and not models) or \
                (method in _NOT_OPTIONS and by_response_id(path)):
            await self._forward(scope, receive, send)
        elif forwarded and method in _NOT_OPTIONS and (method != "GET" or not models) and \
                (method != "POST" or models) and (models or path in KNOWN):
            # A route that exists, asked with the wrong method: 405 and what it takes.
            allow = b"GET" if models else b"POST"
            await send_json(send, 405, error_body(
                405, f"{path} takes {allow.decode()}, not {method}", code="method_not_allowed",
                anthropic=anthropic_path(path)),
                [(b"allow", allow), (b"x-request-id", rid.encode())])
        else:
            await self._api(scope, receive, _stamped(send, rid))
