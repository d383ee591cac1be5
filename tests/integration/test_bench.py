"""`llmctl bench` against a local upstream whose timing the test sets (tests/fakes/
upstream.py: a first-token delay and a gap between tokens), and its metrics against
vLLM's own `calculate_metrics` on the same requests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmctl.bench import Outcome, load_result, metrics

from .conftest import interruptible, start_upstream

FIRST, GAP, TOKENS = 0.10, 0.05, 6
CHECK_TIMEOUT = 15  # bench.check's client timeout, in seconds


def bench(*args: str, home: Path, columns: int = 200, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1", "COLUMNS": str(columns)}
    env.pop("LLMCTL_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "llmctl", "bench", *args], env=env,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def timed():
    up = start_upstream("timed", "--first-delay", str(FIRST), "--token-delay", str(GAP))
    yield up
    up.stop()


def test_figures_match_the_timing_the_server_was_given(timed, tmp_path):
    out = tmp_path / "result.json"
    r = bench("--url", timed.url, "--model", "timed", "--num-prompts", "12",
              "--max-concurrency", "4", "--output-len", str(TOKENS), "--input-len", "16",
              "--percentiles", "50,99", "--save-json", str(out), home=tmp_path)
    assert r.returncode == 0, r.stderr
    res = load_result(out)  # what reads vLLM's result files reads ours
    assert (res["completed"], res["failed"]) == (12, 0), set(res["errors"])
    assert res["total_output_tokens"] == 12 * TOKENS  # from the stream's usage
    # The server sleeps FIRST, then GAP before each token: TTFT = FIRST + GAP.
    assert FIRST + GAP <= res["median_ttft_ms"] / 1000 < FIRST + GAP + 0.06
    for key in ("median_tpot_ms", "median_itl_ms"):
        assert GAP <= res[key] / 1000 < GAP + 0.03, (key, res[key])
    e2el = FIRST + TOKENS * GAP
    assert e2el <= res["median_e2el_ms"] / 1000 < e2el + 0.1
    # vLLM counts the requests active in each one-second bucket: all 12 fit in ~1.2 s.
    assert 4 <= res["max_concurrent_requests"] <= 12
    # The true peak is the limit, and the report says which figure is which.
    assert res["peak_in_flight_requests"] == 4
    assert re.search(r"^Peak requests in flight +4$", r.stdout, re.M)
    assert re.search(r"^Peak concurrent requests \(vLLM, per 1 s\) +"
                     f"{res['max_concurrent_requests']}$", r.stdout, re.M)
    assert len(res["ttfts"]) == 12 and len(res["itls"][0]) == TOKENS - 1
    assert "Successful requests" in r.stdout and "Median TTFT (ms)" in r.stdout


def test_a_sweep_gives_a_row_per_concurrency(timed, tmp_path):
    r = bench("--url", timed.url, "--model", "timed", "--num-prompts", "8", "--output-len", "3",
              "--sweep", "1,4", home=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith(("c=1", "c=4"))]
    assert len(rows) == 2 and "█" in rows[1]


@pytest.mark.parametrize("width", [80, 120])
def test_a_sweep_fits_the_terminal(timed, tmp_path, width):
    r = bench("--url", timed.url, "--model", "timed", "--num-prompts", "4", "--output-len", "2",
              "--sweep", "1,16", home=tmp_path, columns=width)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(x.rstrip()) <= width for x in lines), lines
    head = next(x for x in lines if x.startswith("RUN "))
    assert re.split(r" {2,}", head.strip())[:4] == ["RUN", "DONE", "FAILED", "REQ/S"]
    assert "…" not in r.stdout
    assert [x.split()[0] for x in lines if x.startswith("c=")] == ["c=1", "c=16"]
    if width == 80:
        assert re.search(r"\(\d+ more columns? in a wider terminal, or `llmctl bench "
                         r"--save-json FILE`\)", r.stdout)


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope"], "does not serve a model named 'nope'"),
    (["--model", "timed", "--url", "http://127.0.0.1:9"], "cannot reach"),
])
def test_a_wrong_model_or_a_dead_server_stops_at_once(timed, tmp_path, args, needle):
    url = [] if "--url" in args else ["--url", timed.url]
    sent = timed.stats()["requests"]  # by the tests before, on this module's server
    t0 = time.monotonic()
    r = bench(*url, *args, "--num-prompts", "5", home=tmp_path)
    # The fault this guards: waiting out the model check's 15 s client timeout (or the
    # load's) to learn what the first answer, or the refused connection, already said.
    assert time.monotonic() - t0 < CHECK_TIMEOUT
    assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr
    assert timed.stats()["requests"] == sent and "hint:" in r.stderr  # not one prompt was sent


def test_a_wrong_key_is_one_line(tmp_path, make_proxy):
    from .conftest import FakeBackend, model_for

    up = start_upstream("keyed")
    try:
        proxy = make_proxy([FakeBackend(model_for(up))])
        r = bench("--url", proxy.url, "--model", "keyed", "--api-key", "sk-wrong",
                  home=tmp_path)
        assert r.returncode == 1 and "401" in r.stderr and "--api-key" in r.stderr
        r = bench("--url", proxy.url, "--model", "keyed", "--api-key", "sk-test-key",
                  "--num-prompts", "3", "--output-len", "2", home=tmp_path)
        assert r.returncode == 0, r.stderr
    finally:
        up.stop()


def test_ctrl_c_prints_what_was_measured(timed, tmp_path):
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path), "NO_COLOR": "1"}
    p = subprocess.Popen([sys.executable, "-m", "llmctl", "bench", "--url", timed.url,
                          "--model", "timed", "--num-prompts", "400", "--max-concurrency", "2",
                          "--output-len", "4"], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=interruptible)
    time.sleep(4)  # some requests done, many to go
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "interrupted" in out and "Successful requests" in out and "Traceback" not in err
    done = int(next(ln.split()[-1] for ln in out.splitlines()
                    if ln.startswith("Successful requests")))
    assert 0 < done < 400


def test_metrics_agree_with_vllms_own_calculation():
    """The same request timelines through vLLM's `calculate_metrics` (0.32) and ours."""
    import random

    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    rng = random.Random(3)
    ours, theirs, inputs = [], [], []
    t = 1000.0
    for i in range(40):
        n = rng.randint(1, 30)
        itl = [rng.uniform(0.01, 0.08) for _ in range(n - 1)]
        ttft = rng.uniform(0.05, 0.5)
        ok = i % 13 != 5
        t += rng.uniform(0, 0.3)
        o = Outcome(ok, prompt_len=rng.randint(5, 50), output_tokens=n if ok else 0,
                    ttft=ttft, itl=itl, latency=ttft + sum(itl), start_time=t)
        ours.append(o)
        theirs.append(RequestFuncOutput(success=ok, latency=o.latency, output_tokens=o.output_tokens,
                                        ttft=ttft, itl=itl, prompt_len=o.prompt_len, start_time=t))
        inputs.append(SampleRequest(prompt="x", prompt_len=o.prompt_len, expected_output_len=n))
    goodput = {"ttft": 300.0, "tpot": 50.0}
    v, _ = calculate_metrics(inputs, theirs, 12.5, None, [50.0, 90.0, 99.0], goodput)
    r = metrics(ours, 12.5, (50, 90, 99), goodput)
    assert (r["completed"], r["failed"]) == (v.completed, v.failed)
    for ours_key, vllm_value in [
        ("request_throughput", v.request_throughput), ("request_goodput", v.request_goodput),
        ("output_throughput", v.output_throughput),
        ("total_token_throughput", v.total_token_throughput),
        ("max_output_tokens_per_s", v.max_output_tokens_per_s),
        ("max_concurrent_requests", v.max_concurrent_requests),
        *[(f"{s}_{m}_ms", getattr(v, f"{s}_{m}_ms")) for s in ("mean", "median", "std")
          for m in ("ttft", "tpot", "itl", "e2el")],
        *[(f"p{int(p)}_{m}_ms", value) for m in ("ttft", "tpot", "itl", "e2el")
          for p, value in getattr(v, f"percentiles_{m}_ms")],
    ]:
        assert r[ours_key] == pytest.approx(vllm_value, rel=1e-9, abs=1e-9), ours_key
    assert json.dumps(r)  # every field is JSON, as a result file needs
