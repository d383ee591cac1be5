"""The status history's cost (issue 25): what the daemon's sampler (a round every 2 s:
two backends' vLLM-sized /metrics fetched, then top's figures worked out in a thread)
adds to requests through the proxy.

    .venv/bin/python tests/perf/bench_history.py [--seconds 30] [--interval 2] [--json]

Measures
  * c=1 non-streaming latency through two proxies on the same fast upstream, one
    running the sampler and one not, interleaved in blocks of 50 requests for
    --seconds: p50 and p99 of each, and the difference;
  * one round in this process, against the same upstream: its wall time, the part in
    the thread (`History._take`: registry, machine readings, parse, top.frame) and the
    scrape (mostly waiting on the sockets).
Both proxies run in their own process with the daemon's uvicorn settings; the load
generator (aiohttp) runs here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from bench_proxy import KEY, free_port, one, pct, wait_up  # noqa: E402

PROXY_MAIN = f"""
import asyncio, sys
sys.path.insert(0, {str(HERE.parents[1])!r})
from llmctl import config
from llmctl.daemon import _loop_factory, every, uvicorn_config
from llmctl.observe import Observer
from llmctl.proxy import Proxy
from llmctl.supervisor import Supervisor
import uvicorn
port, up_port, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
class B:
    state, reason, fim, served = "RUNNING", None, None, {{}}
    in_flight, queued, draining, demandable, last_request_at = 0, 0, False, False, None
    upstream_auth = None
    def __init__(self, name):
        self.model = config.ModelConfig(key=name, name=name, source="bench", port=up_port)
backends = [B("bench"), B("bench-2")]
cfg = config.ProxyConfig(port=port, api_keys=({KEY!r},), max_queue_per_model=100000)
proxy = Proxy(backends, cfg, Supervisor(backends, max_queue=100000),
              machine=Observer(backends).text)
server = uvicorn.Server(uvicorn_config(proxy, cfg.host, port, cfg.drain_seconds, cfg))
async def main():
    if interval > 0:
        sampler = asyncio.create_task(every(interval, "the status history",
                                            proxy.history.sample))
    await server.serve()
with asyncio.Runner(loop_factory=_loop_factory()) as r:
    r.run(main())
"""


async def interleaved(session, urls: dict[str, str], seconds: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in urls}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for k, u in urls.items():
            for _ in range(50):
                out[k].append(await one(session, u, False))
    return out


async def rounds(up_port: int, n: int) -> dict[str, float]:
    """n rounds of a History in this process, against the fast upstream."""
    import httpx

    from llmctl import config
    from llmctl.clock import Clock
    from llmctl.observe import Observer
    from llmctl.proxy.history import History
    from llmctl.proxy.metrics import Metrics
    from llmctl.proxy.models import Models

    class B:
        state, in_flight, queued = "RUNNING", 0, 0

        def __init__(self, name: str) -> None:
            self.model = config.ModelConfig(key=name, name=name, source="bench", port=up_port)

    backends = [B("bench"), B("bench-2")]
    m = Metrics()
    for b in backends:  # a proxy that has served: both models, a few keys
        for key in ("admin", "alice", "bob", "ci", "agent"):
            m.child("requests", b.model.name, "200").inc(10)
            m.child("ttfb", b.model.name).observe(0.05)
            m.child("latency", b.model.name).observe(0.5)
            m.child("key_requests", key, b.model.name, "200").inc(10)
            m.child("key_tokens", key, b.model.name, "completion").inc(100)
    async with httpx.AsyncClient(trust_env=False) as http:
        h = History(Models(backends), m.registry, clock=Clock(), http=http,
                    machine=Observer(backends).text)
        took: list[float] = []
        take = h._take

        def timed(engines: str):
            t0 = time.perf_counter()
            try:
                return take(engines)
            finally:
                took.append(time.perf_counter() - t0)

        h._take = timed  # type: ignore[method-assign]
        walls = []
        for _ in range(n):
            t0 = time.perf_counter()
            await h.sample()
            walls.append(time.perf_counter() - t0)
    return {"round_p50_ms": statistics.median(walls) * 1e3,
            "round_max_ms": max(walls) * 1e3,
            "thread_p50_ms": statistics.median(took) * 1e3,
            "thread_max_ms": max(took) * 1e3, "rounds": n}


async def run(args) -> dict:
    up_port, plain_port, sampled_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "fast_upstream.py"), str(up_port)], env=env),
        subprocess.Popen([sys.executable, "-c", PROXY_MAIN, str(plain_port), str(up_port), "0"],
                         env=env),
        subprocess.Popen([sys.executable, "-c", PROXY_MAIN, str(sampled_port), str(up_port),
                          str(args.interval)], env=env),
    ]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         headers={"Authorization": f"Bearer {KEY}"}) as s:
            urls = {"without": f"http://127.0.0.1:{plain_port}",
                    "with": f"http://127.0.0.1:{sampled_port}"}
            for u in (f"http://127.0.0.1:{up_port}", *urls.values()):
                await wait_up(s, u)
            await interleaved(s, urls, 2)  # warm-up
            lat = await interleaved(s, urls, args.seconds)
        w, o = lat["with"], lat["without"]
        res = {"interval_s": args.interval, "seconds": args.seconds,
               "without_p50_ms": statistics.median(o) * 1e3, "with_p50_ms":
               statistics.median(w) * 1e3, "without_p99_ms": pct(o, 99) * 1e3,
               "with_p99_ms": pct(w, 99) * 1e3, "requests_each": min(len(w), len(o))}
        res["added_p50_ms"] = res["with_p50_ms"] - res["without_p50_ms"]
        res["added_p99_ms"] = res["with_p99_ms"] - res["without_p99_ms"]
        res["round"] = await rounds(up_port, args.rounds)
        return res
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="how long the two proxies are measured, interleaved")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="the sampler's interval (the daemon's: 2 s)")
    ap.add_argument("--rounds", type=int, default=50, help="rounds timed in this process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    r = res["round"]
    print(f"history every {res['interval_s']:g} s: c=1 p50 {res['without_p50_ms']:.3f} → "
          f"{res['with_p50_ms']:.3f} ms ({res['added_p50_ms']:+.3f}), p99 "
          f"{res['without_p99_ms']:.3f} → {res['with_p99_ms']:.3f} ms "
          f"({res['added_p99_ms']:+.3f}); {res['requests_each']} requests each")
    print(f"one round (two backends): {r['round_p50_ms']:.2f} ms p50, {r['round_max_ms']:.2f} "
          f"ms max; in its thread {r['thread_p50_ms']:.2f} ms p50, {r['thread_max_ms']:.2f} "
          f"ms max ({r['rounds']} rounds)")


if __name__ == "__main__":
    main()
