"""The load generator behind `llmctl bench`: `vllm bench serve`'s metrics, its field names,
its arrival process, against any OpenAI-compatible endpoint.

May import: client, errors, upstream (and httpx, for https endpoints).
Definitions follow vLLM's benchmarks/serve.py (0.32) exactly, so numbers compare:
  TTFT  first chunk carrying a choice − request sent
  ITL   gaps between chunks carrying a choice
  TPOT  (E2EL − TTFT) ÷ (output tokens − 1), for requests with more than one token
  E2EL  last chunk carrying a choice − request sent
  output tokens: the stream's `usage` (requested with stream_options.include_usage),
  else the tokenizer over the text, else the chunks that carried text.
Percentiles interpolate linearly (numpy's default), std is the population std.
Arrivals: all at once (rate inf), or gaps drawn from a gamma distribution of shape
`burstiness` (1: Poisson), rescaled so N requests take N ÷ rate seconds, as vLLM does.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError, UsageError


@dataclass(frozen=True)
class Request:
    prompt: str
    prompt_len: int  # tokens, as counted here (the server's usage wins when it reports)
    output_len: int


@dataclass
class Outcome:
    """One request as the client saw it (vLLM's RequestFuncOutput)."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    start_time: float = 0.0
    text: str = ""
    error: str = ""
    chunks: int = 0  # chunks that carried a choice
    reported_tokens: int | None = None  # the stream's usage.completion_tokens


# ── datasets ─────────────────────────────────────────────────────────────────

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
          "pack boxes of liquor jugs near old rivers and bright towns").split()


def random_requests(n: int, input_len: int, output_len: int, seed: int,
                    tokenizer: Any = None) -> list[Request]:
    """`n` prompts of `input_len` tokens: random token ids decoded with the model's own
    tokenizer when there is one (as vLLM's random dataset does), else random words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if tokenizer is not None:
            vocab = max(1000, getattr(tokenizer, "vocab_size", 32000) - 1000)
            ids = [rng.randrange(100, vocab) for _ in range(input_len)]
            prompt = tokenizer.decode(ids)
            n_tokens = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        else:
            prompt = " ".join(rng.choice(_WORDS) for _ in range(input_len))
            n_tokens = input_len
        out.append(Request(prompt, n_tokens, output_len))
    return out


def sharegpt_requests(path: Path, n: int, seed: int, tokenizer: Any = None,
                      output_len: int | None = None) -> list[Request]:
    """Prompts from a ShareGPT-format file: the first human turn of each conversation; the
    answer's length (in tokens, or words without a tokenizer) as the output length unless
    `output_len` fixes it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the ShareGPT file {path}: {e}",
                         "a JSON list of {\"conversations\": [{\"from\", \"value\"}, …]}") from None
    pairs = []
    for item in data if isinstance(data, list) else []:
        conv = item.get("conversations") or item.get("conversation") or []
        if len(conv) >= 2 and isinstance(conv[0], dict) and isinstance(conv[1], dict):
            pairs.append((str(conv[0].get("value", "")), str(conv[1].get("value", ""))))
    if not pairs:
        raise UsageError(f"{path} has no conversations with a question and an answer")
    random.Random(seed).shuffle(pairs)

    def count(text: str) -> int:
        if tokenizer is not None:
            return len(tokenizer(text, add_special_tokens=False).input_ids)
        return len(text.split())

    out = []
    for prompt, answer in (pairs * (n // len(pairs) + 1))[:n]:
        out.append(Request(prompt, count(prompt), output_len or max(1, count(answer))))
    return out


# ── metrics ──────────────────────────────────────────────────────────────────


def percentile(xs: Sequence[float], p: float) -> float:
    """numpy's default (linear) percentile."""
    if not xs:
        return 0.0
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _stats(name: str, xs: list[float], percentiles: Sequence[float]) -> dict[str, float]:
    xs = xs or [0.0]
    out = {f"mean_{name}_ms": statistics.fmean(xs) * 1000,
           f"median_{name}_ms": statistics.median(xs) * 1000,
           f"std_{name}_ms": statistics.pstdev(xs) * 1000}
    for p in percentiles:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = percentile(xs, p) * 1000
    return out


def metrics(outcomes: list[Outcome], duration: float, percentiles: Sequence[float] = (99,),
            goodput: dict[str, float] | None = None) -> dict[str, Any]:
    """vLLM's `calculate_metrics` and its result fields (`vllm bench serve --save-result`)."""
    ok = [o for o in outcomes if o.success]
    tpots, all_tpots, itls = [], [], []
    for o in ok:
        tpot = (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else 0.0
        if o.output_tokens > 1:
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls += o.itl
    ttfts = [o.ttft for o in ok]
    e2els = [o.latency for o in ok]
    out_tokens = sum(o.output_tokens for o in ok)
    in_tokens = sum(o.prompt_len for o in ok)
    good = 0
    if goodput:
        for o, tpot in zip(ok, all_tpots, strict=True):
            values = {"ttft": o.ttft, "tpot": tpot, "e2el": o.latency}
            if all(values[k] <= ms / 1000 for k, ms in goodput.items()):
                good += 1
    peak_tokens, peak_conc = _peaks(ok)
    duration = duration or 1e-9
    result: dict[str, Any] = {
        "duration": duration, "completed": len(ok), "failed": len(outcomes) - len(ok),
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration,
        "request_goodput": good / duration if goodput else None,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "input_lens": [o.prompt_len for o in outcomes],
        "output_lens": [o.output_tokens if o.success else 0 for o in outcomes],
        "ttfts": [o.ttft for o in outcomes], "itls": [o.itl for o in outcomes],
        "latencies": [o.latency for o in outcomes],
        "start_times": [o.start_time for o in outcomes],
        "errors": [o.error for o in outcomes],
        "max_output_tokens_per_s": peak_tokens, "max_concurrent_requests": peak_conc,
        "peak_in_flight_requests": in_flight(ok),  # llmctl's own: the true peak
    }
    for name, xs in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        result.update(_stats(name, xs, percentiles))
    return result


def _peaks(ok: list[Outcome]) -> tuple[float, int]:
    """Most output tokens in one second, and most requests active in one second (vLLM's
    one-second buckets from the first request's start)."""
    if not ok:
        return 0.0, 0
    t0 = min(o.start_time for o in ok)
    n = int(math.ceil(max(o.start_time + o.latency for o in ok) - t0)) + 1
    tokens, active = [0] * n, [0] * n
    for o in ok:
        t = o.start_time + o.ttft
        for when in (t, *(t := t + gap for gap in o.itl)):
            b = int(when - t0)
            if 0 <= b < n:
                tokens[b] += 1
        for s in range(int(o.start_time - t0), int(o.start_time + o.latency - t0) + 1):
            active[s] += 1
    return float(max(tokens)), max(active)


def in_flight(ok: list[Outcome]) -> int:
    """Most requests in flight at one moment, from each request's start and end. vLLM's
    `max_concurrent_requests` counts the requests active in each one-second bucket, so
    two that follow each other within a second both count: under --max-concurrency 4
    it can say 8; this cannot exceed 4."""
    edges = sorted([(o.start_time, 1) for o in ok] +
                   [(o.start_time + o.latency, -1) for o in ok])  # an end sorts before a start
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def load_result(path: Path) -> dict[str, Any]:
    """A result file written by `llmctl bench --save-json` or `vllm bench serve
    --save-result`: the same fields either way."""
    data = json.loads(Path(path).read_text())
    missing = [k for k in ("completed", "request_throughput", "output_throughput",
                           "mean_ttft_ms", "mean_tpot_ms") if k not in data]
    if missing:
        raise UsageError(f"{path} is not a benchmark result (no {', '.join(missing)})")
    return data


# ── the load ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Target:
    url: str  # base URL, up to and including /v1
    model: str
    api_key: str | None = None
    endpoint: str = "completions"  # or "chat"
    ignore_eos: bool = True

    @property
    def path(self) -> str:
        return "/chat/completions" if self.endpoint == "chat" else "/completions"

    def body(self, r: Request) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "max_tokens": r.output_len,
                                   "stream": True, "stream_options": {"include_usage": True}}
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": r.prompt}]
        else:
            payload["prompt"] = r.prompt
        if self.ignore_eos:
            payload["ignore_eos"] = True
        return json.dumps(payload).encode()


def _parse_events(buf: bytes, o: Outcome, st: float, chat: bool) -> bytes:
    """Consume the complete SSE events in `buf`; returns what is left over."""
    *events, rest = buf.split(b"\n\n")
    for ev in events:
        for line in ev.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]" or not data:
                continue
            msg = json.loads(data)
            if msg.get("error"):
                raise ApiError(f"the server failed mid-stream: {msg['error']}")
            if choices := msg.get("choices"):
                now = time.perf_counter()
                if o.ttft == 0.0:
                    o.ttft = now - st
                else:
                    o.itl.append(now - st - o.latency)
                o.latency = now - st
                c = choices[0]
                o.text += ((c.get("delta") or {}).get("content") or "") if chat else (
                    c.get("text") or "")
                o.chunks += 1
            if usage := msg.get("usage"):
                if usage.get("completion_tokens") is not None:
                    o.reported_tokens = int(usage["completion_tokens"])
                if usage.get("prompt_tokens") is not None:
                    o.prompt_len = int(usage["prompt_tokens"])
    return rest


class _Client:
    """POST and stream: llmctl's own HTTP/1.1 client (upstream.py, what the proxy uses)
    for http:// endpoints, httpx for https://."""

    def __init__(self, target: Target) -> None:
        self.target = target
        parts = urlsplit(target.url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.prefix = (parts.path.rstrip("/") + target.path).encode()
        self.headers = [(b"content-type", b"application/json")]
        if target.api_key:
            self.headers.append((b"authorization", f"Bearer {target.api_key}".encode()))
        self.tls = parts.scheme == "https"
        self.pool: Any = None
        self.http: Any = None

    async def __aenter__(self) -> _Client:
        if self.tls:
            import httpx

            self.http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
        else:
            from .upstream import Pool

            self.pool = Pool(read_timeout=600)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.http is not None:
            await self.http.aclose()

    async def one(self, r: Request, tokenizer: Any = None) -> Outcome:
        o = Outcome(prompt_len=r.prompt_len)
        chat = self.target.endpoint == "chat"
        body = self.target.body(r)
        st = time.perf_counter()
        o.start_time = time.time()
        try:
            if self.pool is not None:
                resp = await self.pool.post(self.base, self.prefix, self.headers, body)
                try:
                    if resp.status != 200:
                        o.error = f"HTTP {resp.status}: {(await _read_all(resp))[:300]!r}"
                        return o
                    buf = b""
                    while chunk := await resp.read():
                        buf = _parse_events(buf + chunk, o, st, chat)
                finally:
                    resp.close()
            else:
                headers = {k.decode(): v.decode() for k, v in self.headers}
                async with self.http.stream("POST", self.base + self.prefix.decode(),
                                            content=body, headers=headers) as resp:
                    if resp.status_code != 200:
                        o.error = f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}"
                        return o
                    buf = b""
                    async for chunk in resp.aiter_raw():
                        buf = _parse_events(buf + chunk, o, st, chat)
        except Exception as e:
            o.error = f"{type(e).__name__}: {e}"
            return o
        if o.reported_tokens is not None:
            o.output_tokens = o.reported_tokens
        elif tokenizer is not None and o.text:
            o.output_tokens = len(tokenizer(o.text, add_special_tokens=False).input_ids)
        else:
            o.output_tokens = o.chunks
        o.success = o.ttft > 0
        if not o.success:
            o.error = "no chunk carried a choice"
        return o


async def _read_all(resp: Any) -> bytes:
    out = b""
    while chunk := await resp.read():
        out += chunk
    return out


def arrivals(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """When each request is sent, in seconds from the start (vLLM's `get_request`)."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    gaps = [(1.0 / rate) if math.isinf(burstiness) else
            rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(n)]
    at, t = [], 0.0
    for g in gaps:
        t += g
        at.append(t)
    scale = (n / rate) / at[-1] if at and at[-1] else 1.0
    return [a * scale for a in at]


@dataclass
class Live:
    """What a running load reports, for the progress line."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    active: int = 0
    tokens: int = 0


async def run(target: Target, requests: list[Request], *, max_concurrency: int | None = None,
              rate: float = math.inf, burstiness: float = 1.0, seed: int = 0,
              duration: float | None = None, tokenizer: Any = None,
              stop: asyncio.Event | None = None,
              on_progress: Callable[[Live], None] = lambda live: None
              ) -> tuple[list[Outcome], float]:
    """Send the requests (cycling through them for `duration` seconds when given) and
    collect what each did; returns (outcomes, seconds). `stop` ends it early: what was
    measured so far is returned."""
    stop = stop or asyncio.Event()
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    live = Live()
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    n = len(requests) if duration is None else 10**9
    at = arrivals(len(requests), rate, burstiness, seed)
    period = (len(requests) / rate) if not math.isinf(rate) else 0.0

    async with _Client(target) as client:
        async def one(r: Request) -> None:
            try:
                o = await client.one(r, tokenizer)
            finally:
                if sem is not None:
                    sem.release()
                live.active -= 1
            outcomes.append(o)
            live.done += 1
            live.failed += not o.success
            live.tokens += o.output_tokens
            on_progress(live)

        t0 = time.perf_counter()
        for i in range(n):
            if duration is not None and time.perf_counter() - t0 >= duration:
                break
            lap, k = divmod(i, len(requests))
            due = at[k] + lap * period
            wait = due - (time.perf_counter() - t0)
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
            if sem is not None:
                acquire = asyncio.ensure_future(sem.acquire())
                halt = asyncio.ensure_future(stop.wait())
                await asyncio.wait({acquire, halt}, return_when=asyncio.FIRST_COMPLETED)
                halt.cancel()
                if not acquire.done():
                    acquire.cancel()
                    break
            if stop.is_set():
                if sem is not None:
                    sem.release()
                break
            live.sent += 1
            live.active += 1
            t = asyncio.create_task(one(requests[k]))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            on_progress(live)
            await asyncio.sleep(0)  # let answers (and Ctrl-C) in between sends
        halt = asyncio.ensure_future(stop.wait())
        while tasks and not stop.is_set():
            await asyncio.wait({*tasks, halt}, return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        elapsed = time.perf_counter() - t0
        pending = list(tasks)
        for t in pending:  # stopped early: what is still running is not counted
            t.cancel()
        await asyncio.gather(*pending, halt, return_exceptions=True)
        return outcomes, elapsed


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    out = {}
    for spec in specs:
        for part in spec.split():
            key, _, ms = part.partition(":")
            if key not in ("ttft", "tpot", "e2el"):
                raise UsageError(f"--goodput: unknown metric {key!r}",
                                 "write it like ttft:500 tpot:50 e2el:10000 (milliseconds)")
            try:
                out[key] = float(ms)
            except ValueError:
                raise UsageError(f"--goodput {part!r}: not a number of milliseconds") from None
    return out


# ── a whole `llmctl bench` ───────────────────────────────────────────────────


@dataclass(frozen=True)
class Spec:
    """One `llmctl bench` command line, parsed."""

    target: Target
    requests: list[Request]
    max_concurrency: int | None = None
    rate: float = math.inf
    burstiness: float = 1.0
    seed: int = 0
    duration: float | None = None
    percentiles: tuple[float, ...] = (99,)
    goodput: dict[str, float] = field(default_factory=dict)
    sweep: tuple[float, ...] = ()  # concurrencies, or rates when sweep_rates
    sweep_rates: bool = False
    direct: Target | None = None  # --compare-direct: the same load straight to the backend
    tokenizer: Any = None  # counts output tokens when the server reports no usage

    def __post_init__(self) -> None:
        """Options that cannot make a load: one line each, before anything is sent."""
        rates = self.sweep if self.sweep_rates else (self.rate,)
        if any(not r > 0 for r in rates):
            raise UsageError("a request rate must be above 0 (inf sends all at once)")
        if not self.burstiness > 0:
            raise UsageError("--burstiness must be above 0 (1 is Poisson)")
        if not self.percentiles or any(not 0 <= p <= 100 for p in self.percentiles):
            raise UsageError("--percentiles takes numbers from 0 to 100, like 50,90,99")
        if not self.sweep_rates and any(c < 1 for c in self.sweep):
            raise UsageError("--sweep concurrencies must be at least 1")
        unbounded = math.isinf(self.rate) and not self.max_concurrency and not (
            self.sweep and not self.sweep_rates)
        if self.duration is not None and unbounded:
            raise UsageError("--duration with no --max-concurrency and no --request-rate "
                             "would send requests without bound",
                             "add --max-concurrency 64 (or --request-rate N)")


@dataclass(frozen=True)
class Options:
    """`llmctl bench`'s options that need parsing, parsed and checked before anything is
    asked of a server."""

    endpoint: str
    percentiles: tuple[float, ...]
    sweep: tuple[float, ...]
    sweep_rates: bool

    @staticmethod
    def parse(endpoint: str, percentiles: str, sweep: str | None, *, max_concurrency: int | None,
              rate: float, burstiness: float, seed: int, duration: float | None) -> Options:
        if endpoint not in ("completions", "chat"):
            raise UsageError(f"--endpoint {endpoint!r}: completions or chat")
        try:
            pcts = tuple(float(x) for x in percentiles.split(",") if x.strip())
        except ValueError:
            raise UsageError(f"--percentiles {percentiles!r}: numbers, like 50,90,99") from None
        values: tuple[float, ...] = ()
        rates = bool(sweep and sweep.startswith("rate="))
        if sweep:
            try:
                values = tuple(float(x) for x in sweep.removeprefix("rate=").split(","))
            except ValueError:
                raise UsageError(f"--sweep {sweep!r}: 1,4,16,64 or rate=1,2,4") from None
        # The rest of the checks are Spec's: made once here on an empty load.
        Spec(Target("", ""), [], max_concurrency, rate, burstiness, seed, duration, pcts, {},
             values, rates)
        return Options(endpoint, pcts, values, rates)


@dataclass
class Run:
    label: str  # "" for a single run; "c=4", "rate=2", "direct", "proxy"
    result: dict[str, Any]
    interrupted: bool = False


def check(target: Target) -> None:
    """Stop at once, in one line, when the server is down, refuses the key, or does not
    know the model (before the first request of the load)."""
    from .client import Client

    c = Client(target.url.removesuffix("/v1"), target.api_key, timeout=15)
    try:
        known = c.models()
    finally:
        c.close()
    names = {m.get("id") for m in known} | {a for m in known for a in m.get("aliases") or []}
    if known and target.model not in names:
        raise ApiError(f"{target.url} does not serve a model named {target.model!r}",
                       "known: " + ", ".join(sorted(str(m.get("id")) for m in known)))


async def execute(spec: Spec, stop: asyncio.Event,
                  on_progress: Callable[[str, Live], None] = lambda label, live: None
                  ) -> list[Run]:
    """Every run of the command: one, a sweep, or direct-then-proxy."""
    if spec.direct is not None:
        plan = [("direct", spec.direct, {}), ("proxy", spec.target, {})]
    elif spec.sweep:
        key = "rate" if spec.sweep_rates else "max_concurrency"
        plan = [((f"rate={v:g}" if spec.sweep_rates else f"c={int(v)}"), spec.target,
                 {key: (v if spec.sweep_rates else int(v))}) for v in spec.sweep]
    else:
        plan = [("", spec.target, {})]
    runs: list[Run] = []
    for n, (label, target, override) in enumerate(plan):
        # Each run of a sweep or a comparison asks its own prompts: the same prompts again
        # would find vLLM's prefix cache warm and flatter the later runs.
        requests = spec.requests if n == 0 else [
            Request(f"[{label}] {r.prompt}", r.prompt_len, r.output_len) for r in spec.requests]
        kw: dict[str, Any] = {"max_concurrency": spec.max_concurrency, "rate": spec.rate,
                              "burstiness": spec.burstiness, "seed": spec.seed,
                              "duration": spec.duration, **override}
        outcomes, seconds = await run(target, requests, stop=stop, tokenizer=spec.tokenizer,
                                      on_progress=lambda live, lb=label: on_progress(lb, live),
                                      **kw)
        result = metrics(outcomes, seconds, spec.percentiles, spec.goodput or None)
        result.update({"backend": "openai-chat" if target.endpoint == "chat" else "openai",
                       "endpoint_type": "openai-chat" if target.endpoint == "chat" else "openai",
                       "label": label or None, "model_id": target.model, "base_url": target.url,
                       "num_prompts": len(outcomes), "request_rate": kw["rate"]
                       if not math.isinf(kw["rate"]) else "inf",
                       "burstiness": kw["burstiness"], "max_concurrency": kw["max_concurrency"],
                       "date": time.strftime("%Y%m%d-%H%M%S")})
        runs.append(Run(label, result, stop.is_set()))
        if stop.is_set():
            break
    return runs
