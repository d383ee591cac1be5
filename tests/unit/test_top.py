"""`llmctl top`'s figures from scripted scrapes in fake time (exact numbers), its loop, and
its frame as a user reads it at 80 and 120 columns."""

from __future__ import annotations

import io
import math

import httpx
import pytest
from rich.console import Console

from llmctl import top, ui
from llmctl.errors import ApiError

INF = math.inf


@pytest.mark.parametrize("q, buckets, want", [
    # rank 2 of 4 falls in (0.1, 0.5], which holds 2: halfway through it
    (0.5, [(0.1, 1), (0.5, 3), (INF, 4)], 0.3),
    (0.1, [(0.1, 1), (0.5, 3), (INF, 4)], 0.04),  # the first bucket starts at 0
    (0.9, [(0.1, 1), (0.5, 3), (INF, 4)], 0.5),  # in +Inf: the largest finite bound
    (0.5, [(INF, 4), (0.5, 3), (0.1, 1)], 0.3),  # order as scraped does not matter
    (0.5, [(0.1, 2), (0.5, 1), (INF, 4)], 0.1),  # made monotonic, as Prometheus does
    (0.5, [(0.1, 0), (INF, 0)], None),  # nothing observed
    (0.5, [(0.1, 1), (0.5, 3)], None),  # no +Inf bucket
    (0.5, [(INF, 3)], None),
])
def test_histogram_quantile_is_prometheus(q, buckets, want):
    got = top.histogram_quantile(q, buckets)
    assert got == pytest.approx(want) if want is not None else got is None


def test_increase_counts_a_reset_from_zero_and_a_new_series_only_when_told():
    before, after = {"a": 10.0, "b": 7.0}, {"a": 16.0, "b": 2.0, "c": 5.0}
    assert top.increase(before, after, new_from_zero=True) == {"a": 6.0, "b": 2.0, "c": 5.0}
    assert top.increase(before, after, new_from_zero=False) == {"a": 6.0, "b": 2.0}


# ── a scripted proxy ──

def status(coder_state="RUNNING", in_flight=0, queued=0, rss=50 * 2**20, uptime=100.0):
    return {"device": "cpu", "daemon": {"running": True, "uptime_s": uptime},
            "backends": {
                "coder": {"name": "fake-coder", "state": coder_state, "in_flight": in_flight,
                          "queued": queued, "rss_bytes": rss, "gpu_bytes": None},
                "general": {"name": "fake-general", "state": "RUNNING", "in_flight": 0,
                            "queued": 0, "rss_bytes": 40 * 2**20, "gpu_bytes": None},
                "remote": {"name": "far", "state": "RUNNING", "in_flight": 0, "queued": 0,
                           "rss_bytes": None, "gpu_bytes": None}}}


def metrics(req200, req500=None, gen=None, gen_general=None, ttfb=None, kv=None,
            keys=(), cpu=None, resident=None, gpus=()):
    """The proxy's exposition as prometheus_client writes it, with vLLM's merged in."""
    lines = ["# HELP llmctl_requests_total Proxied requests by model and status",
             "# TYPE llmctl_requests_total counter",
             f'llmctl_requests_total{{model="fake-coder",status="200"}} {req200}']
    if req500 is not None:
        lines.append(f'llmctl_requests_total{{model="fake-coder",status="500"}} {req500}')
    lines += ["# HELP llmctl_time_to_first_byte_seconds ttfb",
              "# TYPE llmctl_time_to_first_byte_seconds histogram"]
    for le, n in (ttfb or {}).items():
        lines.append(f'llmctl_time_to_first_byte_seconds_bucket{{le="{le}",model="fake-coder"}}'
                     f" {n}")
    if ttfb:
        lines.append(f'llmctl_time_to_first_byte_seconds_count{{model="fake-coder"}} '
                     f'{ttfb["+Inf"]}')
    lines += ["# HELP llmctl_key_requests_total by key", "# TYPE llmctl_key_requests_total counter"]
    for name, n, _ in keys:
        lines.append(f'llmctl_key_requests_total{{key="{name}",model="fake-coder",status="200"}}'
                     f" {n}")
    lines += ["# HELP llmctl_key_tokens_total by key", "# TYPE llmctl_key_tokens_total counter"]
    for name, _, tokens in keys:
        lines += [f'llmctl_key_tokens_total{{key="{name}",kind="prompt",model="fake-coder"}} '
                  f"{tokens / 2}",
                  f'llmctl_key_tokens_total{{key="{name}",kind="completion",model="fake-coder"}} '
                  f"{tokens / 2}"]
    if cpu is not None:
        lines += ["# HELP llmctl_backend_cpu_seconds_total cpu",
                  "# TYPE llmctl_backend_cpu_seconds_total counter",
                  f'llmctl_backend_cpu_seconds_total{{model="fake-coder"}} {cpu}']
    if resident is not None:
        lines += ["# HELP llmctl_backend_resident_bytes rss",
                  "# TYPE llmctl_backend_resident_bytes gauge",
                  f'llmctl_backend_resident_bytes{{model="fake-coder"}} {resident}']
    for name, _ in top.GPU.items():
        metric = top.GPU[name]
        if gpus:
            lines += [f"# HELP {metric} gpu", f"# TYPE {metric} gauge"]
        for g in gpus:
            lines.append(f'{metric}{{gpu="{g["gpu"]}"}} {g[name]}')
    lines += ["# HELP vllm:generation_tokens_total Number of generation tokens processed.",
              "# TYPE vllm:generation_tokens_total counter"]
    if gen is not None:
        lines.append(f'vllm:generation_tokens_total{{model="fake-coder",engine="0",'
                     f'model_name="fake-coder"}} {gen}')
    if gen_general is not None:
        lines.append(f'vllm:generation_tokens_total{{model="fake-general",engine="0",'
                     f'model_name="fake-general"}} {gen_general}')
    if kv is not None:
        lines += ["# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                  "# TYPE vllm:kv_cache_usage_perc gauge",
                  f'vllm:kv_cache_usage_perc{{model="fake-coder",engine="0",'
                  f'model_name="fake-coder"}} {kv}',
                  f'vllm:kv_cache_usage_perc{{model="fake-coder",engine="1",'
                  f'model_name="fake-coder"}} {kv / 2}']
    return "\n".join(lines) + "\n"


class Proxy:
    """Answers each poll with the next scripted (status, metrics) pair; None for no answer."""

    def __init__(self, script):
        self.script = list(script)
        self.step = -1
        self.seen = []

    def advance(self):
        self.step += 1

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, request.headers.get("authorization")))
        st, text = self.script[self.step]
        if st is None:
            raise httpx.ConnectError("refused", request=request)
        if isinstance(st, int):
            return httpx.Response(st, json={"error": {"message": "invalid API key"}})
        if request.url.path == "/api/status":
            return httpx.Response(200, json=st)
        if isinstance(text, int):
            return httpx.Response(text, json={"error": {"message": "no"}})
        return httpx.Response(200, text=text)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def poller(script, **kw):
    proxy, clock = Proxy(script), Clock()
    p = top.Poller("http://proxy:8080/", "sk-admin", clock=clock,
                   http=httpx.Client(transport=httpx.MockTransport(proxy)), **kw)

    def poll_at(t):
        clock.t = 1000.0 + t
        proxy.advance()
        return p.poll()

    return p, proxy, poll_at


def by_key(view):
    return {m.key: m for m in view.models}


def test_rates_over_the_interval_from_two_scrapes():
    p, proxy, poll_at = poller([
        (status(), metrics(10, gen=100, ttfb={"0.1": 3, "0.5": 4, "+Inf": 4},
                           keys=[("admin", 10, 200)], cpu=10.0)),
        (status(in_flight=3, queued=1),
         metrics(16, req500=2, gen=160, gen_general=7, kv=0.25,
                 ttfb={"0.1": 4, "0.5": 7, "+Inf": 8}, keys=[("admin", 16, 260), ("ci", 2, 40)],
                 cpu=11.5, resident=60 * 2**20)),
    ])
    first = poll_at(0)
    assert [m.req_s for m in first.models] == [None, None, None]  # one scrape: no rate yet
    assert first.window_s == 0 and first.answering
    assert first.device == "cpu" and first.uptime_s == 100.0 and first.url == "http://proxy:8080"

    m = by_key(poll_at(2.0))
    # 6 more 200s and 2 new 500s (a series made on first use began at 0) in 2 s
    assert m["coder"].req_s == 4.0
    assert m["general"].req_s == 0.0  # no series yet: no request yet
    assert m["coder"].tok_s == 30.0  # vLLM's generation tokens, 100 → 160
    # A backend's series that just appeared (it was not scraped before) has no rate yet.
    assert m["general"].tok_s is None and m["remote"].tok_s is None
    # TTFT increments: 1 ≤ 0.1 s, 2 in (0.1, 0.5], 1 above: the median (rank 2 of 4) is
    # halfway through (0.1, 0.5].
    assert m["coder"].ttft_s == pytest.approx(0.3)
    assert m["general"].ttft_s is None
    assert m["coder"].kv == 0.25  # the fullest engine
    assert (m["coder"].in_flight, m["coder"].queued) == (3, 1)
    assert m["coder"].mem_bytes == 50 * 2**20  # /api/status's
    assert proxy.seen[0] == ("/api/status", "Bearer sk-admin")
    assert proxy.seen[1] == ("/metrics", "Bearer sk-admin")


def test_a_proxy_restart_resets_the_counters_and_they_count_from_zero():
    p, _, poll_at = poller([(status(), metrics(50)), (status(uptime=1.0), metrics(3))])
    poll_at(0)
    assert by_key(poll_at(1.5))["coder"].req_s == 2.0


def test_the_keys_last_minute_slides_over_the_scrapes():
    counts = {0: ("admin", 10, 100), 30: ("admin", 40, 400), 61: ("admin", 70, 700),
              95: ("admin", 75, 800)}
    p, _, poll_at = poller([(status(), metrics(0, keys=[counts[t]])) for t in counts])
    seen = {}
    for t in counts:
        v = poll_at(t)
        seen[t] = (v.window_s, [(k.name, k.requests, k.tokens) for k in v.keys])
    assert seen[0] == (0.0, [("admin", 0.0, 0.0)])
    assert seen[30] == (30.0, [("admin", 30.0, 300.0)])
    # Until a scrape is a minute old, everything since the first one.
    assert seen[61] == (61.0, [("admin", 60.0, 600.0)])
    # Then from the newest scrape at least a minute old (t=30): t=0 is dropped.
    assert seen[95] == (65.0, [("admin", 35.0, 400.0)])
    assert [s.t for s in p.history] == [1030.0, 1061.0, 1095.0]


def test_keys_are_listed_busiest_first():
    p, _, poll_at = poller([
        (status(), metrics(0, keys=[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)])),
        (status(), metrics(0, keys=[("a", 1, 10), ("b", 5, 10), ("c", 1, 30), ("d", 1, 30)]))])
    poll_at(0)
    assert [k.name for k in poll_at(1).keys] == ["b", "c", "d", "a"]


def test_hardware_cpu_per_backend_from_the_series_else_status():
    p, _, poll_at = poller([
        (status(), metrics(0, cpu=10.0)),
        (status(), metrics(0, cpu=11.5, resident=60 * 2**20))])
    first = poll_at(0)
    assert [(c.model, c.rss, c.cpu) for c in first.cpus] == [
        ("coder", 50 * 2**20, None), ("general", 40 * 2**20, None), ("remote", None, None)]
    cpus = {c.model: c for c in poll_at(2).cpus}
    assert cpus["coder"].cpu == 0.75 and cpus["coder"].rss == 60 * 2**20
    assert cpus["general"].cpu is None and cpus["general"].rss == 40 * 2**20
    assert p.last.gpus == []


def test_hardware_gpus_when_the_proxy_reads_them():
    g0 = {"gpu": "0", "used": 10 * 2**30, "total": 24 * 2**30, "util": 0.45, "temp_c": 61,
          "power_w": 180.5}
    g1 = {**g0, "gpu": "1", "util": 0.0}
    _, _, poll_at = poller([(status(), metrics(0, gpus=[g1, g0]))])
    v = poll_at(0)
    assert [(g.gpu, g.used, g.total, g.util, g.temp_c, g.power_w) for g in v.gpus] == [
        ("0", 10 * 2**30, 24 * 2**30, 0.45, 61, 180.5), ("1", 10 * 2**30, 24 * 2**30, 0.0, 61,
                                                           180.5)]
    assert v.cpus == []


def test_a_proxy_that_stops_answering_keeps_the_last_figures_and_says_since_when():
    _, _, poll_at = poller([
        (status(), metrics(10)), (status(), metrics(14)), (None, None), (None, None),
        (status(), metrics(20))])
    poll_at(0)
    poll_at(1)
    gone = poll_at(2)
    assert not gone.answering and gone.problem == "connection refused"
    assert gone.stale_s == 1.0 and by_key(gone)["coder"].req_s == 4.0
    assert poll_at(5).stale_s == 4.0
    back = poll_at(6)
    assert back.answering and back.problem is None
    assert by_key(back)["coder"].req_s == 1.2  # 14 → 20 over the 5 s since the last scrape


def test_nothing_answered_yet_is_an_empty_frame_not_an_error():
    _, _, poll_at = poller([(None, None)])
    v = poll_at(0)
    assert not v.answering and v.models == [] and v.stale_s is None


def test_a_refused_key_raises_one_error():
    _, _, poll_at = poller([(401, None)])
    with pytest.raises(ApiError) as e:
        poll_at(0)
    assert "refused the key (401): invalid API key" in e.value.message
    assert "--api-key" in e.value.hint


@pytest.mark.parametrize("answer, problem", [
    (403, "this key may not read /metrics: rates need an admin key"),
    (500, "/metrics: answered 500"),
    ("<html>not metrics</html>\n", "/metrics: "),
])
def test_metrics_it_cannot_read_leave_the_status_figures(answer, problem):
    _, _, poll_at = poller([(status(in_flight=2), answer), (status(), answer)])
    poll_at(0)
    v = poll_at(1)
    assert v.answering and v.problem.startswith(problem)
    assert by_key(v)["coder"].in_flight == 0 and by_key(v)["coder"].req_s is None
    assert v.keys == []


# ── the loop ──

class FakeScreen:
    def __init__(self, clock, keys):
        self.clock, self.keys, self.shown, self.waits = clock, list(keys), [], []

    def show(self, view):
        self.shown.append((self.clock.t, view))

    def key(self, timeout):
        self.waits.append(round(timeout, 3))
        k = self.keys.pop(0) if self.keys else None
        self.clock.t += 0.25 if k else timeout
        return k


def test_watch_refreshes_each_interval_until_q():
    clock = Clock()
    polls = []

    def poll():
        clock.t += 0.3  # a scrape takes time: the wait is what is left of the interval
        polls.append(clock.t)
        return top.View("u")

    screen = FakeScreen(clock, [None, "x", None, "q"])
    top.watch(poll, screen, 1.0, first=top.View("first"), clock=clock)
    assert [v.url for _, v in screen.shown] == ["first", "u", "u"]
    # the first frame was read already; then a key that is not q waits out the rest
    assert screen.waits == [1.0, 0.7, 0.45, 0.7]
    assert [t - 1000 for t in polls] == pytest.approx([1.3, 2.3])


# ── the frame ──

def render(view, width):
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(
        ui.top_view(view, width, 1.0))
    return buf.getvalue()


LONG = "qwen2.5-coder-32b-instruct-awq"


def busy_view():
    v = top.View("http://127.0.0.1:8080", "cuda", 3725.0, window_s=60.0)
    v.models = [top.ModelRow(LONG, "Qwen/x", "RUNNING", 12, 3, 4.5, 1234.5, 0.1834, 0.67,
                             19 * 2**30),
                top.ModelRow("general", "g", "STARTING", 0, 0, 0.0, None, None, None, None)]
    v.keys = [top.KeyRow("alice-laptop-vscode", 120, 45_678), top.KeyRow("admin", 3, 10)]
    v.gpus = [top.GpuRow("0", 20 * 2**30, 24 * 2**30, 0.93, 71, 245.0)]
    return v


@pytest.mark.parametrize("width", [80, 120])
def test_the_frame_fits_and_keeps_names_whole(width):
    text = render(busy_view(), width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "up 1h02m" in lines[0] and "device cuda" in lines[0]
    assert LONG in text and "alice-laptop-vscode" in text and "STARTING" in text
    for needle in ("4.50", "1234", "45,678", "20.00 GiB of 24.00 GiB", "93%", "71°C",
                   "245 W", "q quits"):
        assert needle in text, needle
    if width == 120:
        assert "TTFT P50" in text and "183 ms" in text and "67%" in text and "19.00 GiB" in text
        assert "more column" not in text
    else:  # memory gives way first (the GPUs' is below), then KV and TTFT; the rest stays
        assert "19.00 GiB" not in text and "67%" not in text and "TTFT" not in text
        assert "QUEUED" in text and "TOK/S" in text
        assert "(3 more columns in a wider terminal)" in text


def test_usual_model_names_fit_every_column_in_80():
    v = busy_view()
    v.models[0].key = "coder"
    text = render(v, 80)
    assert "more column" not in text and "19.00 GiB" in text and "183 ms" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_frame_says_when_the_proxy_is_not_answering():
    v = busy_view()
    v.answering, v.problem, v.stale_s = False, "connection refused", 7.2
    text = render(v, 80)
    assert "not answering (connection refused; figures from 7 s ago)" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_frame_before_any_rate_and_on_a_cpu():
    v = top.View("http://h:1", "cpu", 5.0)
    v.models = [top.ModelRow("coder", "c", "RUNNING", 0, 0)]
    v.keys = [top.KeyRow("admin", 0, 0)]
    v.cpus = [top.CpuRow("coder", 52 * 2**20, None), top.CpuRow("far", None, 1.5)]
    text = render(v, 80)
    assert "keys (from the next refresh)" in text
    assert "CPU (per backend process group)" in text and "52 MiB" in text and "150%" in text
    row = next(line.split() for line in text.splitlines() if line.startswith("coder "))
    assert row == ["coder", "RUNNING", "0", "0", "-", "-", "-", "-", "-"]

