"""Streaming through the proxy against nginx, on an upstream that writes every SSE event
as its own socket write (aiohttp, tests/perf/aiohttp_upstream.py), all in one run.

    .venv/bin/python tests/perf/bench_streaming.py [--pairs 5] [--json]

Measures, for direct, llmctl's proxy and nginx (one worker, `proxy_buffering off`,
keep-alive upstream; only when `nginx` is installed: Debian's nginx-light):
  * added p50/p99 at concurrency 1 (non-streaming, and time to the first chunk);
  * chunks per second at concurrency 64 × 256 events, llmctl's as a fraction of nginx's
    (issue 16's goal: >= 90 %), as the median of back-to-back rounds;
  * CPU seconds per 100 000 chunks, of llmctl's proxy process and of nginx's processes.
Also run by tests/perf/bench_proxy.py at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_proxy import KEY, PROXY_MAIN, free_port, latency, pct, throughput, wait_up  # noqa: E402

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measure(args) -> dict:
    up_port, px_port, ng_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tmp = tempfile.TemporaryDirectory()
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "aiohttp_upstream.py"), str(up_port)],
                         env=env),
        subprocess.Popen([sys.executable, "-c", PROXY_MAIN, str(px_port),
                          f"http://127.0.0.1:{up_port}"], env=env),
    ]
    targets = {"direct": f"http://127.0.0.1:{up_port}", "llmctl": f"http://127.0.0.1:{px_port}"}
    cpu_pids = {"llmctl": [procs[1].pid]}
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                       else None)
    if nginx:
        conf = Path(tmp.name) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp.name, up=up_port, port=ng_port))
        procs.append(subprocess.Popen([nginx, "-c", str(conf), "-p", tmp.name]))
        targets["nginx"] = f"http://127.0.0.1:{ng_port}"
        cpu_pids["nginx"] = [procs[-1].pid]
    try:
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=conn,
                                         headers={"Authorization": f"Bearer {KEY}"}) as s:
            for u in targets.values():
                await wait_up(s, u)
            await latency(s, targets, 100, False)
            res: dict = {"nginx": bool(nginx)}
            for name, stream in (("non_streaming", False), ("first_chunk", True)):
                lat = await latency(s, targets, args.requests, stream)
                d = lat["direct"]
                res[name] = {k: {"p50_ms": statistics.median(v) * 1e3,
                                 "p99_ms": pct(v, 99) * 1e3,
                                 "added_p50_ms": (statistics.median(v) - statistics.median(d)) * 1e3,
                                 "added_p99_ms": (pct(v, 99) - pct(d, 99)) * 1e3}
                             for k, v in lat.items()}
            rates: dict[str, list[float]] = {k: [] for k in targets}
            cpu: dict[str, float] = dict.fromkeys(cpu_pids, 0.0)
            chunks: dict[str, float] = dict.fromkeys(cpu_pids, 0.0)
            for _ in range(args.pairs):  # each round: every target, back to back
                for k, u in targets.items():
                    c0 = cpu_seconds(cpu_pids[k]) if k in cpu_pids else 0.0
                    t0 = time.perf_counter()
                    rate = await throughput(s, u, args.concurrency, args.chunks, args.rounds)
                    if k in cpu_pids:
                        cpu[k] += cpu_seconds(cpu_pids[k]) - c0
                        chunks[k] += rate * (time.perf_counter() - t0)
                    rates[k].append(rate)
            res["throughput"] = {
                "concurrency": args.concurrency, "chunks_per_response": args.chunks,
                **{f"{k}_chunks_per_s": statistics.median(v) for k, v in rates.items()},
                "llmctl_of_direct": statistics.median(
                    p / d for p, d in zip(rates["llmctl"], rates["direct"], strict=True)),
                "cpu_s_per_100k_chunks": {k: cpu[k] / chunks[k] * 1e5 for k in cpu}}
            if nginx:
                res["throughput"]["llmctl_of_nginx"] = statistics.median(
                    p / n for p, n in zip(rates["llmctl"], rates["nginx"], strict=True))
                res["throughput"]["nginx_of_direct"] = statistics.median(
                    n / d for n, d in zip(rates["nginx"], rates["direct"], strict=True))
                res["throughput"]["llmctl_of_nginx_rounds"] = [
                    round(p / n, 3) for p, n in zip(rates["llmctl"], rates["nginx"], strict=True)]
            return res
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        tmp.cleanup()


def report(res: dict) -> None:
    for name in ("non_streaming", "first_chunk"):
        r = res[name]
        print(f"{name:>14} (aiohttp upstream): " + " | ".join(
            f"{k} p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms"
            + ("" if k == "direct" else f" (added p50 {v['added_p50_ms']:+.3f} ms, "
                                        f"p99 {v['added_p99_ms']:+.3f} ms)")
            for k, v in r.items()))
    t = res["throughput"]
    line = (f"    streaming c={t['concurrency']} × {t['chunks_per_response']}: direct "
            f"{t['direct_chunks_per_s']:.0f}/s, llmctl {t['llmctl_chunks_per_s']:.0f}/s "
            f"({t['llmctl_of_direct'] * 100:.1f} % of direct)")
    if res["nginx"]:
        line += (f", nginx {t['nginx_chunks_per_s']:.0f}/s ({t['nginx_of_direct'] * 100:.1f} % "
                 f"of direct); llmctl = {t['llmctl_of_nginx'] * 100:.1f} % of nginx "
                 f"(rounds {t['llmctl_of_nginx_rounds']})")
    else:
        line += "; nginx is not installed (apt install nginx-light), so no comparison"
    print(line)
    print("    CPU seconds per 100 000 chunks: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in t["cpu_s_per_100k_chunks"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        report(res)


if __name__ == "__main__":
    main()
