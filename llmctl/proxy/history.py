"""The status view's history: every couple of seconds the figures `llmctl top` shows —
each model's state, requests in flight and queued, requests/s, tokens/s, TTFT p50, KV
cache use and memory; each key's requests and tokens in the last minute; the GPUs, or
each backend's CPU — worked out by `top.frame` itself from what the proxy holds (its own
series, the machine's, the running servers' vLLM series, the status record), and kept
for the last ten minutes, so the web page opens on charts that already have a past
(`GET /api/history`).

May import: top, proxy.federate, proxy.models. One round (`History.sample`, run by the
daemon's `every`) reads each running server's /metrics concurrently, each within the
scrape timeout (a server late or failing is left out of that point, never the whole
point), then does the rest in a thread: the status record, the machine's readings, the
proxy's counters read from its registry (no text round trip), the two vLLM series it
needs picked out of the scrape by name before parsing. The ring holds at most
span / interval points, and the one-minute window behind the keys' figures keeps only
the keys' series.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import top
from . import federate
from .models import Models

SPAN_S = 600.0  # what the page opens with: the last ten minutes
INTERVAL_S = 2.0
TIMEOUT_S = 2.0  # per server's /metrics, as the proxy's own scrape
# What top reads of vLLM; the rest of a server's exposition is dropped unparsed.
ENGINE_SERIES = (top.GEN_TOKENS, top.KV_USAGE)
KEY_SERIES = (top.KEY_REQUESTS, top.KEY_TOKENS)

Point = dict[str, Any]


def collected(registry: Any) -> top.Samples:
    """A prometheus_client registry's samples by name, as `top.parse` would read its
    exposition, without writing and parsing the text."""
    out: top.Samples = {}
    for family in registry.collect():
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def picked(text: str, names: tuple[str, ...]) -> str:
    """The sample lines of these series from a merged exposition (every line there has
    labels: the model's, at least)."""
    starts = tuple(n + "{" for n in names)
    return "\n".join(line for line in text.splitlines() if line.startswith(starts))


def _num(v: float | None, digits: int = 4) -> float | None:
    if v is None or math.isnan(v) or math.isinf(v):
        return None
    return round(v, digits)


def point(t: float, view: top.View) -> Point:
    """One frame as the page reads it: plain JSON, figures it has not got left out."""
    models = {}
    for m in view.models:
        figures = {"name": m.name, "state": m.state, "in_flight": m.in_flight,
                   "queued": m.queued, "req_s": _num(m.req_s), "tok_s": _num(m.tok_s),
                   "ttft_s": _num(m.ttft_s, 5), "kv": _num(m.kv),
                   "mem_bytes": m.mem_bytes}
        models[m.key] = {k: v for k, v in figures.items() if v is not None}
    keys = {k.name: {"requests": round(k.requests), "tokens": round(k.tokens)}
            for k in view.keys}
    gpus = [{k: v for k, v in (("gpu", g.gpu), ("used_bytes", g.used),
                                ("total_bytes", g.total), ("util", _num(g.util)),
                                ("temp_c", _num(g.temp_c, 1)), ("power_w", _num(g.power_w, 1)))
             if v is not None} for g in view.gpus]
    cpus = {c.model: {k: v for k, v in (("rss_bytes", c.rss), ("cpu", _num(c.cpu)))
                      if v is not None} for c in view.cpus}
    return {"t": round(t, 3), "models": models, "keys": keys,
            "window_s": round(view.window_s, 1), "gpus": gpus, "cpus": cpus}


class History:
    """The ring of points and the round that adds one. Seams: the clock (`monotonic` for
    rates, `time` for the points' times), the status record, the machine's readings and
    the HTTP client for the servers' /metrics."""

    def __init__(self, models: Models, registry: Any, *, clock: Any,
                 status: Callable[[], dict[str, Any]] | None = None,
                 machine: Callable[[], str] | None = None, http: Any = None,
                 span_s: float = SPAN_S, interval_s: float = INTERVAL_S,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.models, self.registry, self.clock = models, registry, clock
        self.status, self.machine, self.http = status, machine, http
        self.span_s, self.interval_s, self.timeout_s = span_s, interval_s, timeout_s
        self.points: deque[Point] = deque(maxlen=max(1, math.ceil(span_s / interval_s)))
        self._prev: top.Snapshot | None = None
        self._window: deque[top.Snapshot] = deque()  # the keys' last minute, keys' series only

    async def sample(self) -> None:
        """Add one point. A server that does not answer within the timeout is left out of
        it; anything else that fails raises (the daemon's loop logs it and goes on)."""
        engines = ""
        targets = self.models.engines()
        if targets and self.http is not None:
            engines, _ = await federate.scrape(self.http, targets, self.timeout_s)
        p = await asyncio.to_thread(self._take, engines)
        self.points.append(p)  # here, on the loop: `answer` reads the ring from it too

    def _take(self, engines: str) -> Point:
        now, wall = self.clock.monotonic(), self.clock.time()
        status = self.status() if self.status is not None else self._status()
        samples = collected(self.registry)
        if self.machine is not None:
            samples.update(top.parse(self.machine()))
        if engines:
            samples.update(top.parse(picked(engines, ENGINE_SERIES)))
        cur = top.Snapshot(now, status, samples)
        self._window.append(top.Snapshot(now, {}, {k: samples[k] for k in KEY_SERIES
                                                   if k in samples}))
        # One snapshot at or before the minute's start, as top keeps (top.Poller).
        while len(self._window) > 1 and self._window[1].t <= now - top.WINDOW_S:
            self._window.popleft()
        view = top.frame("", self._prev, cur, self._window[0])
        self._prev = cur
        return point(wall, view)

    def _status(self) -> dict[str, Any]:
        """Without the daemon's status record (a proxy alone): what the proxy knows."""
        return {"backends": {b.model.key: {"name": b.model.name, "state": str(b.state),
                                           "in_flight": getattr(b, "in_flight", None),
                                           "queued": getattr(b, "queued", None)}
                             for b in self.models.all}}

    def answer(self, since: float | None = None, *, models: set[str] | None = None,
               key: str | None = None, hardware: bool = True) -> dict[str, Any]:
        """`GET /api/history`: the points after `since` (all kept, when None). For a named
        key: only `models` (its models' keys; None: all), only its own row of the keys'
        figures (`key`), and no machine readings (`hardware=False`), as /api/status and
        /metrics hide them from it."""
        out = []
        for p in self.points:
            if since is not None and p["t"] <= since:
                continue
            if models is not None or key is not None or not hardware:
                p = {**p,
                     "models": {k: v for k, v in p["models"].items()
                                if models is None or k in models},
                     "keys": {k: v for k, v in p["keys"].items() if key is None or k == key},
                     "gpus": p["gpus"] if hardware else [],
                     "cpus": {k: v for k, v in p["cpus"].items()
                              if hardware and (models is None or k in models)}}
            out.append(p)
        return {"now": round(self.clock.time(), 3), "interval_s": self.interval_s,
                "span_s": self.span_s, "points": out}
