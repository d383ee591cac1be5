"""`llmctl top`: what the live view shows, read from a proxy at each refresh — its
`/api/status` (each model's state, requests in flight and queued, memory) and its
`/metrics` (the proxy's counters and, merged in, each backend's vLLM series) — and the
rates, percentiles and one-minute tallies worked out from successive scrapes.

May import: errors (and httpx, prometheus_client). Nothing here draws: `View` is plain
data, ui.top_view renders it. `watch` is the loop, with the screen and the clock as seams.

Rates follow Prometheus's own rules, so `top` and a dashboard agree: a counter that went
down was reset (the proxy restarted) and counts from zero; TTFT p50 is
`histogram_quantile` over the interval's bucket increments.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ApiError

# Samples by name: each one's labels and value.
Samples = dict[str, list[tuple[dict[str, str], float]]]

WINDOW_S = 60.0  # the keys table's "last minute"
# The proxy leaves a slow backend out of a scrape after 2 s; more than this is a proxy
# in trouble, and `q` waits for the poll to end.
TIMEOUT_S = 3.0

REQUESTS = "llmctl_requests_total"
TTFB = "llmctl_time_to_first_byte_seconds_bucket"
KEY_REQUESTS = "llmctl_key_requests_total"
KEY_TOKENS = "llmctl_key_tokens_total"
GEN_TOKENS = "vllm:generation_tokens_total"
KV_USAGE = "vllm:kv_cache_usage_perc"
GPU = {"used": "llmctl_gpu_memory_used_bytes", "total": "llmctl_gpu_memory_total_bytes",
       "util": "llmctl_gpu_utilization_ratio", "temp_c": "llmctl_gpu_temperature_celsius",
       "power_w": "llmctl_gpu_power_watts"}
BACKEND_RSS = "llmctl_backend_resident_bytes"
BACKEND_CPU = "llmctl_backend_cpu_seconds_total"


def parse(text: str) -> Samples:
    """Prometheus's text format as samples by name. Raises ValueError on what is not."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def totals(samples: Samples, name: str, by: str | tuple[str, ...]) -> dict[Any, float]:
    """The samples named `name` summed by one label (or a tuple of labels); samples
    without it are left out."""
    keys = (by,) if isinstance(by, str) else by
    out: dict[Any, float] = {}
    for labels, value in samples.get(name, ()):
        if all(k in labels for k in keys) and not math.isnan(value):
            group = labels[keys[0]] if isinstance(by, str) else tuple(labels[k] for k in keys)
            out[group] = out.get(group, 0.0) + value
    return out


def increase(before: dict[Any, float], after: dict[Any, float], *, new_from_zero: bool
             ) -> dict[Any, float]:
    """How much each counter grew. One that went down was reset and counts from zero (as
    Prometheus's `increase`). One that is new counts from zero when `new_from_zero` (the
    proxy makes its series on first use, so a new one began at 0 within this process);
    otherwise it has no increase yet (a backend's series appear when it is scraped)."""
    out = {}
    for k, v in after.items():
        if k in before:
            out[k] = v - before[k] if v >= before[k] else v
        elif new_from_zero:
            out[k] = v
    return out


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus's `histogram_quantile` over (upper bound, cumulative count) pairs: linear
    within the bucket the rank falls in, the first bucket starting at 0, and the largest
    finite bound when the rank falls in +Inf. None when there is nothing to rank."""
    bs = sorted(buckets)
    if len(bs) < 2 or not math.isinf(bs[-1][0]):
        return None
    # Cumulative counts only grow; a scrape between two bucket updates may say otherwise.
    for i in range(1, len(bs)):
        if bs[i][1] < bs[i - 1][1]:
            bs[i] = (bs[i][0], bs[i - 1][1])
    total = bs[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next((i for i in range(len(bs) - 1) if bs[i][1] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], bs[b][1]
    if b > 0:
        start = bs[b - 1][0]
        count -= bs[b - 1][1]
        rank -= bs[b - 1][1]
    return start + (end - start) * (rank / count)


def quantiles(q: float, before: Samples, after: Samples, name: str) -> dict[str, float]:
    """Per model, the q-quantile of what a histogram observed between two scrapes."""
    grew = increase(totals(before, name, ("model", "le")), totals(after, name, ("model", "le")),
                    new_from_zero=True)
    by_model: dict[str, list[tuple[float, float]]] = {}
    for (model, le), n in grew.items():
        by_model.setdefault(model, []).append((float(le), n))
    out = {}
    for model, buckets in by_model.items():
        v = histogram_quantile(q, buckets)
        if v is not None:
            out[model] = v
    return out


def gauge(samples: Samples, name: str, by: str) -> dict[str, float]:
    """A gauge by one label; where several series share it (one per vLLM engine), the
    highest: the one that runs out first."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, ()):
        if by in labels and not math.isnan(value):
            out[labels[by]] = max(out.get(labels[by], value), value)
    return out


@dataclass(frozen=True)
class Snapshot:
    t: float  # the clock's reading when it was taken
    status: dict[str, Any]  # /api/status
    samples: Samples  # /metrics, parsed; empty when it could not be read


@dataclass
class ModelRow:
    key: str
    name: str
    state: str
    in_flight: int | None
    queued: int | None
    req_s: float | None = None
    tok_s: float | None = None
    ttft_s: float | None = None  # p50 over the last interval
    kv: float | None = None  # 0..1
    mem_bytes: int | None = None


@dataclass
class KeyRow:
    name: str
    requests: float
    tokens: float


@dataclass
class GpuRow:
    gpu: str
    used: float | None = None
    total: float | None = None
    util: float | None = None  # 0..1
    temp_c: float | None = None
    power_w: float | None = None


@dataclass
class CpuRow:
    model: str
    rss: float | None = None
    cpu: float | None = None  # cores busy (CPU seconds per second)


@dataclass
class View:
    """One frame of `top`."""

    url: str
    device: str | None = None
    uptime_s: float | None = None
    answering: bool = True
    problem: str | None = None  # why the proxy did not answer, or what it did not give
    stale_s: float | None = None  # not answering: the age of the figures shown
    models: list[ModelRow] = field(default_factory=list)
    keys: list[KeyRow] = field(default_factory=list)
    window_s: float = 0.0  # the span the keys' figures cover (up to WINDOW_S)
    gpus: list[GpuRow] = field(default_factory=list)
    cpus: list[CpuRow] = field(default_factory=list)


def frame(url: str, prev: Snapshot | None, cur: Snapshot, oldest: Snapshot) -> View:
    """A frame from the current snapshot, the one before it (rates over the interval) and
    the oldest kept (the keys' last minute)."""
    st, s = cur.status, cur.samples
    dt = cur.t - prev.t if prev is not None else 0.0
    p = prev.samples if prev is not None else {}

    def per_s(name: str, by: str, new_from_zero: bool) -> dict[str, float]:
        if prev is None or dt <= 0:
            return {}
        grew = increase(totals(p, name, by), totals(s, name, by), new_from_zero=new_from_zero)
        return {k: v / dt for k, v in grew.items()}

    req_s = per_s(REQUESTS, "model", True)
    # A backend's series come and go with it: a rate needs both scrapes.
    tok_s = per_s(GEN_TOKENS, "model", False)
    cpu = per_s(BACKEND_CPU, "model", False)
    ttft = quantiles(0.5, p, s, TTFB) if prev is not None and dt > 0 else {}
    kv = gauge(s, KV_USAGE, "model")
    rss = gauge(s, BACKEND_RSS, "model")
    metrics_read = bool(s)
    models = []
    for key, b in (st.get("backends") or {}).items():
        name = b.get("name") or key
        mem = b.get("gpu_bytes") if b.get("gpu_bytes") is not None else b.get("rss_bytes")
        models.append(ModelRow(
            key, name, str(b.get("state") or "?"), b.get("in_flight"), b.get("queued"),
            req_s=req_s.get(name, 0.0 if metrics_read and prev is not None else None),
            tok_s=tok_s.get(name), ttft_s=ttft.get(name), kv=kv.get(name), mem_bytes=mem))

    window = cur.t - oldest.t
    kreq = increase(totals(oldest.samples, KEY_REQUESTS, "key"),
                    totals(s, KEY_REQUESTS, "key"), new_from_zero=True)
    ktok = increase(totals(oldest.samples, KEY_TOKENS, "key"),
                    totals(s, KEY_TOKENS, "key"), new_from_zero=True)
    keys = [KeyRow(k, kreq.get(k, 0.0), ktok.get(k, 0.0)) for k in {*kreq, *ktok}]
    keys.sort(key=lambda r: (-r.requests, -r.tokens, r.name))

    gpus: dict[str, GpuRow] = {}
    for attr, name in GPU.items():
        for g, v in gauge(s, name, "gpu").items():
            setattr(gpus.setdefault(g, GpuRow(g)), attr, v)
    cpus = []
    if not gpus:
        for m in models:
            b = st["backends"][m.key]
            cpus.append(CpuRow(m.key, rss.get(m.name, b.get("rss_bytes")), cpu.get(m.name)))
    daemon = st.get("daemon") or {}
    return View(url, st.get("device"), daemon.get("uptime_s"), models=models, keys=keys,
                window_s=window, gpus=sorted(gpus.values(), key=lambda g: _num(g.gpu)),
                cpus=cpus)


def _num(s: str) -> tuple[int, str]:
    return (int(s), "") if s.isdigit() else (1 << 30, s)


class Poller:
    """Reads a proxy at each `poll()` and keeps what the rates need: the snapshot before
    and those of the last minute. The HTTP client and the clock are seams."""

    def __init__(self, url: str, key: str | None, *, http: Any = None,
                 clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S
                 ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.clock = clock
        self.window_s = window_s
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.Client(timeout=TIMEOUT_S)
        self.http.headers.update(headers)
        self.history: deque[Snapshot] = deque()
        self.last: View | None = None
        self.failing_since: float | None = None

    def close(self) -> None:
        self.http.close()

    def poll(self) -> View:
        """The next frame. A proxy that does not answer gives the last figures with the
        reason and their age; a key it refuses raises ApiError (waiting will not help)."""
        import httpx

        now = self.clock()
        try:
            status = self._get("/api/status")
        except (httpx.HTTPError, _Unwell) as e:
            return self._not_answering(now, _why(e))
        problem = None
        try:
            r = self.http.get(self.url + "/metrics")
            if r.status_code == 403:
                problem = "this key may not read /metrics: rates need an admin key"
                samples: Samples = {}
            else:
                r.raise_for_status()
                samples = parse(r.text)
        except (httpx.HTTPError, ValueError) as e:
            problem, samples = f"/metrics: {_why(e)}", {}
        self.failing_since = None
        cur = Snapshot(now, status, samples)
        prev = self.history[-1] if self.history else None
        if samples or not self.history:
            self.history.append(cur)
        # Keep one snapshot at or before the window's start, so the keys' figures cover a
        # whole minute once there is one.
        while len(self.history) > 1 and self.history[1].t <= now - self.window_s:
            self.history.popleft()
        view = frame(self.url, prev, cur, self.history[0])
        view.problem = problem
        self.last = view
        return view

    def _get(self, path: str) -> dict[str, Any]:
        r = self.http.get(self.url + path)
        if r.status_code in (401, 403):
            raise ApiError(f"{self.url} refused the key ({r.status_code}): "
                           f"{_message(r)}", "pass an admin key with --api-key (the config's "
                           "api_keys), or set LLMCTL_API_KEY")
        if r.status_code != 200:
            raise _Unwell(f"{path} answered {r.status_code}")
        try:
            return r.json()
        except ValueError as e:
            raise _Unwell(f"{path} did not answer JSON") from e

    def _not_answering(self, now: float, why: str) -> View:
        if self.failing_since is None:
            self.failing_since = now
        last = self.last
        view = View(self.url) if last is None else View(
            self.url, last.device, last.uptime_s, models=last.models, keys=last.keys,
            window_s=last.window_s, gpus=last.gpus, cpus=last.cpus)
        view.answering = False
        view.problem = why
        view.stale_s = now - self.history[-1].t if self.history else None
        return view


class _Unwell(Exception):
    """The proxy answered, but not with what `top` reads."""


def _why(e: Exception) -> str:
    import httpx

    if isinstance(e, httpx.ConnectError):
        return "connection refused"
    if isinstance(e, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(e, httpx.HTTPStatusError):
        return f"answered {e.response.status_code}"
    return str(e) or type(e).__name__


def _message(r: Any) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        return r.text[:200]


class Screen(Protocol):
    def show(self, view: View) -> None: ...

    def key(self, timeout: float) -> str | None:
        """A key pressed within `timeout` seconds, else None (after waiting that long)."""


QUIT_KEYS = ("q", "Q")


def watch(poll: Callable[[], View], screen: Screen, interval: float, *,
          first: View | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Show a frame every `interval` seconds until `q` (`first`, already read, first). A
    frame's own time (a slow scrape) counts against the interval, so refreshes keep
    their pace."""
    view = first
    while True:
        started = clock()
        screen.show(view if view is not None else poll())
        view = None
        while (left := started + interval - clock()) > 0:
            if screen.key(left) in QUIT_KEYS:
                return
