"""The FastAPI side: everything that is not forwarded. /health, /ready, /metrics, the model
list, /api/status and /api/history, starting and stopping models by hand, and the web page.

May import: lifecycle, usage, proxy.answers, proxy.callers, proxy.federate, proxy.metrics,
proxy.models (and fastapi, httpx, prometheus_client). "Who is calling" is one dependency (`caller`), so
each handler names what it needs instead of repeating the key check.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# at run time, and `Who` (a dependency made inside `build`) must be an object, not a name.
import asyncio
import ipaddress
import math
from collections.abc import Callable
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..lifecycle import NotServing, State
from ..usage import summary as usage_summary
from . import federate
from .answers import Refused, error_body
from .callers import Caller, Callers
from .metrics import Ledger
from .models import Control, Models, Routable


def error(status: int, message: str, *, headers: dict[str, str] | None = None,
          **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, **kw), status_code=status, headers=headers)


def ipaddress_is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


# Headers a reverse proxy adds: a request that carries one came from wherever the relay's
# client is, whatever address it arrived from.
RELAYED = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")

# What a named key sees of /api/status: each of its models' state and figures, not the
# daemon's pid, log paths, ports, upstream URLs or the proxy-wide counters.
PUBLIC_FIELDS = frozenset({
    "name", "aliases", "state", "phase", "managed", "fim", "group", "start", "swap",
    "in_flight", "queued", "max_model_len", "kv_tokens_planned", "kv_tokens_reported",
    "planned_bytes", "gpu_bytes", "rss_bytes", "uptime_s", "restarts", "resting",
    "started_at", "ready_at", "last_request_at", "stops_at", "idle_stop_s",
    "expected_start_s", "last_start_s", "concurrency_reported", "alive", "tools",
    "tool_trained", "reasoning"})


def redacted(data: dict[str, Any], mine: set[str] | None) -> dict[str, Any]:
    """/api/status as a named key sees it (`mine`: the models it may use; None: all)."""
    daemon = data.get("daemon") or {}
    return {"device": data.get("device"),
            "daemon": {k: daemon.get(k) for k in ("running", "uptime_s")},
            "backends": {k: {f: v for f, v in b.items() if f in PUBLIC_FIELDS}
                         for k, b in (data.get("backends") or {}).items()
                         if mine is None or k in mine}}


def entry(b: Routable) -> dict[str, Any]:
    """A model as /v1/models lists it: what the server said of itself (vLLM: root,
    max_model_len), then llmctl's own: FIM, and tools (`parser`, and `trained`: false when
    `auto` tool use is unreliable on it) and reasoning (the parser), null when none."""
    able = getattr(b, "abilities", None)  # a backend without one (a test's) has none
    parser = getattr(able, "tools", None)
    thinks = getattr(able, "reasoning", None)
    return {**b.served,
            "id": b.model.name, "object": "model", "created": 0, "owned_by": "llmctl",
            "aliases": list(b.model.names[1:]), "state": str(b.state),
            "start": b.model.start if b.model.managed else None,
            "group": b.model.group or None, "fim": b.fim,
            "tools": {"parser": parser, "trained": able.trained} if parser else None,
            "reasoning": {"parser": thinks} if thinks else None}


# How long one backend's /metrics may take before this scrape goes on without it.
SCRAPE_TIMEOUT_S = 2.0


def scrape_timeout(headers: Any) -> float:
    """How long a backend may take: SCRAPE_TIMEOUT_S, or less when the scraper says it
    gives up sooner (Prometheus sends its scrape_timeout): a hung backend must not cost
    the whole scrape. A quarter second is kept for the proxy's own part."""
    try:
        theirs = float(headers.get("x-prometheus-scrape-timeout-seconds") or "inf")
    except ValueError:
        theirs = math.inf
    if math.isnan(theirs):
        theirs = math.inf
    return max(0.1, min(SCRAPE_TIMEOUT_S, theirs - 0.25))


def build(*, models: Models, callers: Callers, control: Control, ledger: Ledger, web: bool,
          status: Callable[[], dict[str, Any]] | None, open_metrics: bool = False,
          http: httpx.AsyncClient | None = None,
          machine: Callable[[], str] | None = None,
          history: Callable[..., dict[str, Any]] | None = None) -> FastAPI:
    api = FastAPI(title="llmctl", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None),
                     code=code)

    @api.exception_handler(Refused)
    async def _refused(request: Request, r: Refused) -> JSONResponse:
        return error(r.status, r.message, code=r.code, param=r.param)

    @api.exception_handler(NotServing)
    async def _not_serving(request: Request, e: NotServing) -> JSONResponse:
        return error(e.status, e.message, code=e.code)

    def who(request: Request) -> Caller:
        """The one key check of this side: raises Refused(401)."""
        c = callers.identify(
            [v.encode("latin-1") for v in request.headers.getlist("authorization")],
            [v.encode("latin-1") for v in request.headers.getlist("x-api-key")])
        if c.metrics_only and request.url.path != "/metrics":
            raise Refused(403, f"the key '{c.name}' reads /metrics and nothing else",
                          "forbidden")
        return c

    Who = Annotated[Caller, Depends(who)]

    def local(request: Request) -> bool:
        return ipaddress_is_loopback(request.client.host if request.client else "")

    @api.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @api.get("/ready")
    async def ready() -> JSONResponse:
        states = models.states()
        ok = any(s == State.RUNNING for s in states.values())
        return JSONResponse({"ready": ok, "models": states}, status_code=200 if ok else 503)

    @api.get("/metrics")
    async def metrics(request: Request) -> Response:
        # An admin key, unless the config opens it: "from this machine" proves nothing
        # behind a reverse proxy on the same host (every client is loopback there).
        if not open_metrics:
            c = who(request)
            if not (c.admin or c.metrics_only):
                raise Refused(403, f"the key '{c.name}' may not read /metrics; the config's "
                              "api_keys and metrics keys (`llmctl monitor prometheus-config`) "
                              "may (or set `open_metrics = true` in [proxy])", "forbidden")
        # The backends' own series (vLLM's engine metrics), labelled with the model: one
        # scrape target for the whole stack.
        targets = models.engines()
        engines, failed = ("", [])
        if targets and http is not None:
            engines, failed = await federate.scrape(http, targets,
                                                    scrape_timeout(request.headers))
        for name in failed:
            ledger.metrics.child("scrape_failures", name).inc()
        # The machine: backend states and processes, GPUs (the daemon's observe.py).
        here = await asyncio.to_thread(machine) if machine is not None else ""
        return Response(generate_latest(ledger.metrics.registry) + here.encode()
                        + engines.encode(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/status")
    async def api_status(c: Who) -> JSONResponse:
        data = await asyncio.to_thread(status) if status else {"backends": {}}
        used = await asyncio.to_thread(usage_summary) if callers.keys_path is not None else None
        if not c.admin:
            data = redacted(data, models.keys_for(c))
            if used is not None:  # usage per key: a named key sees its own
                data["usage"] = {k: v for k, v in used.items() if k == c.name}
            return JSONResponse(data)
        if used is not None:
            data = {**data, "usage": used}
        return JSONResponse({**data, "proxy_counters": dict(ledger.counters)})

    @api.get("/api/history")
    async def api_history(request: Request, c: Who) -> JSONResponse:
        # The status view's last minutes (proxy/history.py), redacted for a named key as
        # /api/status is: its models, its own key, no machine readings (admin's /metrics).
        raw, since = request.query_params.get("since"), None
        if raw is not None:
            try:
                since = float(raw)
            except ValueError:
                since = math.nan
            if not math.isfinite(since):
                return error(400, f"since={raw!r} is not a time (seconds since the epoch, "
                             "as the points' `t`)", code="invalid_value", param="since")
        if history is None:
            return JSONResponse({"now": None, "interval_s": None, "span_s": 0, "points": []})
        if c.admin:
            return JSONResponse(history(since))
        return JSONResponse(history(since, models=models.keys_for(c), key=c.name,
                                    hardware=False))

    if web:
        _web_routes(api)

    @api.post("/api/models/{name:path}/{action}")
    async def control_model(name: str, action: str, request: Request) -> JSONResponse:
        # `llmctl start|stop MODEL`: with an admin key; with no keys at all, only from this
        # machine and not through a relay (a same-host reverse proxy makes everyone local).
        c = who(request)
        if callers.open and (not local(request)
                             or any(h in request.headers for h in RELAYED)):
            return error(403, "with no api_keys set, models are started and stopped only "
                         "from the machine that runs llmctl; set api_keys to do it from "
                         "elsewhere", code="forbidden")
        if not c.admin:
            return error(403, f"the key '{c.name}' may not start or stop models; the "
                         "config's api_keys may", code="forbidden")
        if action not in ("start", "stop"):
            return error(404, f"no action {action!r}; start or stop", code="not_found")
        b = models.find(name)
        if action == "start":
            control.start_by_hand(b)
        else:
            await control.stop_by_hand(b)
        return JSONResponse({"model": b.model.name, "state": str(b.state)},
                            status_code=202 if action == "start" else 200)

    @api.get("/v1/models")
    async def list_models(c: Who) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [entry(b) for b in models.all
                                                        if c.may_use(b)]})

    @api.get("/v1/models/{name:path}")
    async def one_model(name: str, c: Who) -> JSONResponse:
        # What the openai SDK's models.retrieve() asks; a name or an alias.
        return JSONResponse(entry(models.find(name, c)))

    return api


def _web_routes(api: FastAPI) -> None:
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
