"""The status view's history (proxy/history.py): rounds in fake time against the proxy's
real Prometheus registry and stand-in servers' /metrics (httpx's MockTransport) — exact
figures, as `top` would show them; a server that fails is left out of a point and the
daemon's loop goes on; the ring stays bounded; a named key sees its own."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from llmctl import config
from llmctl.daemon import every
from llmctl.proxy.history import History
from llmctl.proxy.metrics import Metrics
from llmctl.proxy.models import Models


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1_700_000_000.0 + self.t


class Backend:
    def __init__(self, key: str, name: str, port: int, state: str = "RUNNING") -> None:
        self.model = config.ModelConfig(key=key, name=name, source="org/weights", port=port)
        self.state, self.in_flight, self.queued = state, 0, 0


class Servers:
    """Each server's /metrics (by port): vLLM's generated tokens and KV cache use, or a
    failure."""

    def __init__(self) -> None:
        self.tokens = {8001: 0.0, 8002: 0.0}
        self.kv = {8001: 0.25, 8002: 0.5}
        self.down: set[int] = set()
        self.asked: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port
        self.asked.append(port)
        if port in self.down:
            raise httpx.ConnectError("refused", request=request)
        text = (f'# TYPE vllm:generation_tokens_total counter\n'
                f'vllm:generation_tokens_total{{engine="0"}} {self.tokens[port]}\n'
                f'# TYPE vllm:kv_cache_usage_perc gauge\n'
                f'vllm:kv_cache_usage_perc{{engine="0"}} {self.kv[port]}\n'
                f'# TYPE vllm:num_requests_running gauge\n'
                f'vllm:num_requests_running{{engine="0"}} 1.0\n')
        return httpx.Response(200, text=text)


def status(models: Models, mem: dict[str, int]) -> dict:
    return {"device": "cpu", "daemon": {"running": True, "uptime_s": 5.0},
            "backends": {b.model.key: {"name": b.model.name, "state": b.state,
                                       "in_flight": b.in_flight, "queued": b.queued,
                                       "rss_bytes": mem.get(b.model.key), "gpu_bytes": None}
                         for b in models.all}}


MACHINE = """# TYPE llmctl_backend_cpu_seconds_total counter
llmctl_backend_cpu_seconds_total{{model="coder-x"}} {cpu}
# TYPE llmctl_backend_resident_bytes gauge
llmctl_backend_resident_bytes{{model="coder-x"}} 3e8
"""


def make(**kw):
    """A History over two servers in fake time, and what the test moves: the clock, the
    servers, the proxy's books, the backends, the machine's CPU seconds. A callable in
    `kw` makes that argument from (the backends, the servers)."""
    clock, servers, metrics = Clock(), Servers(), Metrics()
    models = Models([Backend("coder", "coder-x", 8001), Backend("general", "general-x", 8002)])
    cpu = {"s": 0.0}
    args = {"http": httpx.AsyncClient(transport=httpx.MockTransport(servers)),
            "status": lambda: status(models, {"coder": 300 * 2**20, "general": 2**30}),
            "machine": lambda: MACHINE.format(cpu=cpu["s"]), "span_s": 20, "interval_s": 2}
    args.update({k: v(models, servers) if callable(v) else v for k, v in kw.items()})
    h = History(models, metrics.registry, clock=clock, **args)
    return h, clock, servers, metrics, models, cpu


@pytest.fixture
def rig():
    return make()


def served(metrics: Metrics, model: str, key: str, n: int, ttfb: float, tokens: int) -> None:
    """n requests through the proxy, in its books as forward.py writes them."""
    for _ in range(n):
        metrics.child("requests", model, "200").inc()
        metrics.child("ttfb", model).observe(ttfb)
        metrics.child("key_requests", key, model, "200").inc()
        metrics.child("key_tokens", key, model, "completion").inc(tokens)


def test_a_round_gives_what_top_shows(rig):
    h, clock, servers, metrics, models, cpu = rig
    asyncio.run(h.sample())
    first = h.points[-1]
    assert first["t"] == 1_700_001_000.0
    assert "req_s" not in first["models"]["coder"]  # no interval yet: no rate
    clock.t += 2
    served(metrics, "coder-x", "alice", 4, 0.02, 10)
    served(metrics, "general-x", "admin", 1, 0.2, 5)
    servers.tokens[8001] += 60.0
    cpu["s"] += 1.0
    models.all[0].in_flight = 2
    asyncio.run(h.sample())
    p = h.points[-1]
    coder, general = p["models"]["coder"], p["models"]["general"]
    assert coder == {"name": "coder-x", "state": "RUNNING", "in_flight": 2, "queued": 0,
                     "req_s": 2.0, "tok_s": 30.0, "ttft_s": pytest.approx(0.0175),
                     "kv": 0.25, "mem_bytes": 300 * 2**20}
    assert general["req_s"] == 0.5 and general["tok_s"] == 0.0 and general["kv"] == 0.5
    assert p["keys"] == {"alice": {"requests": 4, "tokens": 40},
                         "admin": {"requests": 1, "tokens": 5}}
    assert p["window_s"] == 2.0
    # No GPU here: each backend's CPU (cores busy) and memory, as top's CPU table.
    assert p["gpus"] == [] and p["cpus"]["coder"] == {"rss_bytes": 3e8, "cpu": 0.5}
    # Each running server was asked for its /metrics once per round.
    assert sorted(servers.asked) == [8001, 8001, 8002, 8002]


def test_a_server_at_rest_is_not_asked(rig):
    h, clock, servers, *_ = rig
    h.models.all[1].state = "STOPPED"
    asyncio.run(h.sample())
    assert servers.asked == [8001]


def test_the_keys_figures_cover_the_last_minute(rig):
    h, clock, servers, metrics, *_ = rig
    for _ in range(40):  # 80 s, two requests of alice's per round
        served(metrics, "coder-x", "alice", 2, 0.02, 1)
        asyncio.run(h.sample())
        clock.t += 2
    p = h.points[-1]
    # The window starts at the last snapshot at or before a minute ago: 60 s, 30 rounds.
    assert p["window_s"] == 60.0 and p["keys"]["alice"]["requests"] == 60
    assert len(h._window) == 31  # the keys' series of the last minute, no more


def test_a_server_that_fails_is_left_out_and_the_loop_goes_on(caplog):
    rounds_left = {"status": 2}

    def flaky(models, servers):
        def read():  # the status record unreadable in the second round only
            rounds_left["status"] -= 1
            if rounds_left["status"] == 0:
                raise OSError("stack.json: no such file")
            return status(models, {})
        return read

    h, clock, servers, metrics, models, _ = make(status=flaky)
    servers.down.add(8001)
    rounds = []

    async def sleep(_s):
        clock.t += 2
        servers.tokens[8002] += 20.0
        rounds.append(1)
        if len(rounds) == 4:
            raise asyncio.CancelledError

    caplog.set_level(logging.INFO, "llmctl.daemon")
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(every(2.0, "the status history", h.sample, sleep=sleep))
    assert len(h.points) == 2  # three rounds, the failed one added nothing
    p = h.points[-1]
    assert "tok_s" not in p["models"]["coder"]  # its server did not answer
    assert "kv" not in p["models"]["coder"]
    # 20 tokens a round: 40 over the 4 s since the last point
    assert p["models"]["general"]["tok_s"] == 10.0
    assert [r.getMessage() for r in caplog.records] == [
        "the status history failed (OSError: stack.json: no such file); trying again every 2s",
        "the status history works again"]


def test_a_server_that_hangs_holds_a_round_no_longer_than_the_timeout():
    def hanging(models, servers):
        async def answer(request: httpx.Request) -> httpx.Response:
            if request.url.port == 8001:
                await asyncio.sleep(3600)
            return servers(request)
        return httpx.AsyncClient(transport=httpx.MockTransport(answer))

    h, *_ = make(http=hanging, timeout_s=0.3)
    asyncio.run(asyncio.wait_for(h.sample(), 5))  # raises if the round waits for the hang
    assert h.points[-1]["models"]["general"]["kv"] == 0.5
    assert "kv" not in h.points[-1]["models"]["coder"]


def test_the_ring_keeps_the_span_and_no_more(rig):
    h, clock, *_ = rig
    for _ in range(25):
        asyncio.run(h.sample())
        clock.t += 2
    assert len(h.points) == 10  # 20 s at one point every 2 s
    assert h.points[-1]["t"] - h.points[0]["t"] == 18.0
    everything = h.answer()
    assert everything["span_s"] == 20 and everything["interval_s"] == 2
    assert [p["t"] for p in everything["points"]] == [p["t"] for p in h.points]
    # `since`: what came after a point the page already has.
    since = h.points[-3]["t"]
    assert [p["t"] for p in h.answer(since)["points"]] == [h.points[-2]["t"], h.points[-1]["t"]]


def test_a_named_key_sees_its_models_its_own_row_and_no_machine(rig):
    h, clock, servers, metrics, *_ = rig
    asyncio.run(h.sample())
    clock.t += 2
    served(metrics, "coder-x", "alice", 1, 0.02, 3)
    served(metrics, "general-x", "bob", 1, 0.02, 3)
    asyncio.run(h.sample())
    mine = h.answer(models={"general"}, key="bob", hardware=False)["points"][-1]
    assert set(mine["models"]) == {"general"} and mine["keys"] == {"bob": {"requests": 1,
                                                                          "tokens": 3}}
    assert mine["gpus"] == [] and mine["cpus"] == {}
    # The ring itself is untouched: the admin's answer still has everything.
    full = h.answer()["points"][-1]
    assert set(full["models"]) == {"coder", "general"} and set(full["keys"]) == {"alice", "bob"}
    assert full["cpus"]


GPUS = """# TYPE llmctl_gpu_memory_used_bytes gauge
llmctl_gpu_memory_used_bytes{gpu="1",name="H100"} 4e10
llmctl_gpu_memory_used_bytes{gpu="0",name="H100"} 8e10
# TYPE llmctl_gpu_memory_total_bytes gauge
llmctl_gpu_memory_total_bytes{gpu="1",name="H100"} 8.5e10
llmctl_gpu_memory_total_bytes{gpu="0",name="H100"} 8.5e10
# TYPE llmctl_gpu_utilization_ratio gauge
llmctl_gpu_utilization_ratio{gpu="0",name="H100"} 0.63
# TYPE llmctl_gpu_temperature_celsius gauge
llmctl_gpu_temperature_celsius{gpu="0",name="H100"} 61
"""


def test_on_a_gpu_machine_the_cards_take_the_cpu_rows_place():
    h, *_ = make(machine=lambda models, servers: (lambda: GPUS))
    asyncio.run(h.sample())
    p = h.points[-1]
    assert p["gpus"] == [
        {"gpu": "0", "used_bytes": 8e10, "total_bytes": 8.5e10, "util": 0.63, "temp_c": 61.0},
        {"gpu": "1", "used_bytes": 4e10, "total_bytes": 8.5e10}]
    assert p["cpus"] == {}  # as top: the GPUs, or else each backend's CPU
    assert h.answer(hardware=False)["points"][-1]["gpus"] == []
