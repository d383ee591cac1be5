"""The benchmark must keep running: a tiny pass that checks its output, never its speed."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_proxy.py"


def test_benchmark_runs_and_reports_every_figure():
    r = subprocess.run([sys.executable, str(BENCH), "--requests", "50", "--pairs", "1",
                        "--scrape-phases", "2",
                        "--rounds", "1", "--chunks", "16", "--concurrency", "4", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for name in ("non_streaming", "first_chunk"):
        assert {"added_p50_ms", "added_p99_ms", "direct_p50_ms", "proxy_p50_ms"} <= set(res[name])
        assert res[name]["proxy_p50_ms"] > 0
    t = res["throughput"]
    assert t["direct_chunks_per_s"] > 0 and t["proxy_chunks_per_s"] > 0
    assert res["fim"]["fim_p50_ms"] > 0 and res["fim"]["plain_p50_ms"] > 0
    assert res["scrape"]["scrapes"] >= 1 and res["scrape"]["scrape_p50_ms"] > 0
    for name in ("agents_non_streaming", "agents_first_chunk"):
        assert {"chat_p50_ms", "messages_added_p50_ms", "messages_x_api_key_added_p50_ms",
                "responses_added_p50_ms"} <= set(res[name])
        assert res[name]["messages_p50_ms"] > 0


def test_cli_benchmark_runs_and_reports_every_figure():
    bench = Path(__file__).resolve().parent / "bench_cli.py"
    r = subprocess.run([sys.executable, str(bench), "--runs", "1", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"python_pass_s", "help_s", "status_s", "status_json_s"}
    assert all(v > 0 for v in res.values())


def test_pull_benchmark_runs_and_reports_every_figure():
    bench = Path(__file__).resolve().parent / "bench_pull.py"
    r = subprocess.run([sys.executable, str(bench), "--mib", "8", "--shards", "2", "--rounds",
                        "1", "--conn-mib", "50", "--total-mib", "100", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for link in ("capped", "local"):
        assert {"llmctl", "curl"} <= set(res[link])
        for tool, fig in res[link].items():
            assert fig["mib_per_s"] > 0 and fig["cpu_s_per_gib"] > 0, tool
            assert tool == "llmctl" or fig["llmctl_vs"] > 0
    assert set(res["skipped"]) <= {"aria2c", "hf"}


def test_the_history_benchmark_runs_and_reports_every_figure():
    r = subprocess.run([sys.executable, str(BENCH.parent / "bench_history.py"), "--seconds",
                        "3", "--interval", "0.5", "--rounds", "3", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["with_p50_ms"] > 0 and res["without_p50_ms"] > 0 and res["requests_each"] > 0
    assert res["round"]["rounds"] == 3 and res["round"]["thread_p50_ms"] > 0
