"""`llmctl bench`'s metrics on request timelines worked out by hand."""

from __future__ import annotations

import math
import random
import time

import pytest

from llmctl.bench import Outcome, _parse_events, arrivals, metrics, parse_goodput, percentile
from llmctl.errors import UsageError


def timeline() -> list[Outcome]:
    a = Outcome(True, prompt_len=10, output_tokens=4, ttft=0.1, itl=[0.05, 0.05, 0.1],
                latency=0.3, start_time=100.0)
    b = Outcome(True, prompt_len=20, output_tokens=2, ttft=0.2, itl=[0.1], latency=0.3,
                start_time=100.5)
    c = Outcome(False, prompt_len=30, error="HTTP 503")
    return [a, b, c]


def test_every_metric_of_a_known_timeline():
    r = metrics(timeline(), duration=1.0, percentiles=(50, 99), goodput={"ttft": 150})
    assert (r["completed"], r["failed"]) == (2, 1)
    assert r["total_input_tokens"] == 30 and r["total_output_tokens"] == 6
    assert r["request_throughput"] == 2.0 and r["output_throughput"] == 6.0
    assert r["total_token_throughput"] == 36.0
    # TPOT excludes the first token: a (0.3 − 0.1) / 3, b (0.3 − 0.2) / 1.
    assert r["mean_tpot_ms"] == pytest.approx((200 / 3 + 100) / 2)
    assert r["mean_ttft_ms"] == pytest.approx(150) and r["median_ttft_ms"] == pytest.approx(150)
    assert r["p99_ttft_ms"] == pytest.approx(199)  # 100 + (200 − 100) × 0.99, linear
    assert r["p50_ttft_ms"] == pytest.approx(150)
    assert r["mean_itl_ms"] == pytest.approx(75) and r["std_itl_ms"] == pytest.approx(25)
    assert r["mean_e2el_ms"] == pytest.approx(300) and r["std_e2el_ms"] == pytest.approx(0)
    assert r["request_goodput"] == 1.0  # only a's TTFT is within 150 ms
    # All six tokens fall in the first second, and both requests were active in it.
    assert r["max_output_tokens_per_s"] == 6 and r["max_concurrent_requests"] == 2
    assert r["output_lens"] == [4, 2, 0] and r["errors"] == ["", "", "HTTP 503"]


def test_the_true_peak_in_flight_beside_vllms_one_second_buckets():
    # --max-concurrency 4: four requests of 0.4 s, then four more as those end.
    waves = [Outcome(True, output_tokens=1, ttft=0.1, latency=0.4, start_time=100.0 + t)
             for t in (0, 0, 0, 0, 0.4, 0.4, 0.4, 0.4)]
    r = metrics(waves, duration=0.8)
    assert r["max_concurrent_requests"] == 8  # all eight touch the first second
    assert r["peak_in_flight_requests"] == 4  # a request that ends as one starts: not both
    # The known timeline: a ends at 100.3, b starts at 100.5: one at a time.
    assert metrics(timeline(), duration=1.0)["peak_in_flight_requests"] == 1


def test_no_successful_request_gives_zeros_not_a_crash():
    r = metrics([Outcome(False, error="x")], duration=2.0)
    assert r["completed"] == 0 and r["failed"] == 1 and r["mean_ttft_ms"] == 0
    assert r["max_output_tokens_per_s"] == 0 and r["peak_in_flight_requests"] == 0


def test_percentile_is_numpys_linear_one():
    np = pytest.importorskip("numpy")
    rng = random.Random(1)
    for n in (1, 2, 7, 100):
        xs = [rng.random() for _ in range(n)]
        for p in (0, 25, 50, 90, 99, 99.9, 100):
            assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))


def test_arrivals_inf_poisson_and_uniform():
    assert arrivals(5, math.inf, 1.0, 0) == [0.0] * 5
    at = arrivals(200, 4.0, 1.0, seed=7)
    assert at[-1] == pytest.approx(50.0)  # N requests take N ÷ rate, as vLLM rescales
    assert all(b >= a for a, b in zip(at, at[1:], strict=False))
    assert arrivals(200, 4.0, 1.0, seed=7) == at  # --seed makes it repeatable
    even = arrivals(4, 2.0, math.inf, 0)
    assert even == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_sse_events_split_anywhere_are_read_whole():
    o = Outcome()
    st = time.perf_counter()
    stream = (b'data: {"choices":[{"text":"he"}]}\n\ndata: {"choices":[{"text":"llo"}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
              b"data: [DONE]\n\n")
    buf = b""
    for i in range(0, len(stream), 9):  # nine bytes at a time
        buf = _parse_events(buf + stream[i:i + 9], o, st, chat=False)
    assert buf == b"" and o.text == "hello" and o.chunks == 2
    assert o.reported_tokens == 2 and o.prompt_len == 7 and len(o.itl) == 1
    assert 0 < o.ttft <= o.latency


def test_goodput_specs():
    assert parse_goodput(["ttft:500 tpot:50", "e2el:10000"]) == {"ttft": 500, "tpot": 50,
                                                                  "e2el": 10000}
    for bad in (["latency:5"], ["ttft:fast"]):
        with pytest.raises(UsageError):
            parse_goodput(bad)
