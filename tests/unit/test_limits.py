"""The per-key limiter in fake time: every figure exact."""

import pytest

from llmctl.limits import Bucket, Limits, span


def test_a_bucket_bursts_its_minute_then_refills_at_n_per_minute():
    b = Bucket(60, now=0.0)
    for _ in range(60):
        assert b.wait(0.0) == 0
        b.take(0.0)
    assert b.wait(0.0) == 1.0  # one a second
    assert b.wait(0.5) == 0.5
    assert b.wait(1.0) == 0
    assert b.remaining(30.0) == 30 and b.full_in(30.0) == 30.0


def test_requests_per_minute_refuse_then_recover():
    lim = Limits(rpm=2, tpm=0, max_concurrent=0, now=0.0)
    assert lim.admit(0.0) is None and lim.admit(0.0) is None
    what, wait = lim.admit(0.0)
    assert what == "2 requests per minute" and wait == 30.0
    assert lim.admit(29.0) is not None
    assert lim.admit(30.0) is None


def test_tokens_are_spent_after_the_answer_and_may_go_below_zero():
    lim = Limits(rpm=0, tpm=60, max_concurrent=0, now=0.0)
    assert lim.admit(0.0) is None
    lim.done(0.0, 70)  # one answer overshot the minute's budget by 10
    what, wait = lim.admit(0.0)
    assert what == "60 tokens per minute" and wait == 11.0  # back to 1 token
    assert lim.admit(11.0) is None


def test_concurrency_counts_requests_in_flight():
    lim = Limits(rpm=0, tpm=0, max_concurrent=1, now=0.0)
    assert lim.admit(0.0) is None
    assert lim.admit(0.0)[0] == "1 requests in flight, the most this key may have"
    lim.done(0.1, 0)
    assert lim.admit(0.1) is None


def test_openai_header_names_and_reset_format():
    lim = Limits(rpm=10, tpm=100, max_concurrent=0, now=0.0)
    lim.admit(0.0)
    lim.done(0.0, 40)
    h = dict(lim.headers(0.0))
    assert h[b"x-ratelimit-limit-requests"] == b"10"
    assert h[b"x-ratelimit-remaining-requests"] == b"9"
    assert h[b"x-ratelimit-reset-requests"] == b"6s"
    assert h[b"x-ratelimit-remaining-tokens"] == b"60" and h[b"x-ratelimit-reset-tokens"] == b"24s"
    assert [span(0.02), span(1), span(360)] == ["20ms", "1s", "6m0s"]


def test_tokens_are_reserved_so_parallel_requests_cannot_overshoot_together():
    """20 requests at once asking 107 tokens each against tpm=50: one is admitted (into the
    untouched window), the rest wait for the refill, not 20 x 107 tokens."""
    lim = Limits(rpm=0, tpm=50, max_concurrent=0, now=0.0)
    results = [lim.admit(0.0, reserve=107) for _ in range(20)]
    assert results[0] is None and all(r is not None for r in results[1:])
    what, wait = results[1]
    assert what == "50 tokens per minute (this request may use 107)"
    assert wait == pytest.approx(107 / (50 / 60))  # at most until full again: -57 → 50
    lim.done(1.0, 20, reserved=107)  # it used 20: 87 come back
    assert lim.tokens.remaining(1.0) == 30  # 50 - 20, plus 1 s of refill, capped
    assert lim.admit(1.0, reserve=30) is None


def test_a_full_window_admits_a_request_larger_than_the_budget():
    lim = Limits(rpm=0, tpm=1000, max_concurrent=0, now=0.0)
    assert lim.admit(0.0, reserve=32000) is None  # an agent's default max_tokens
    lim.done(0.0, 1500, reserved=32000)
    what, wait = lim.admit(0.0, reserve=32000)
    assert wait == pytest.approx(90.0)  # from -500 to full at 1000 a minute; then admitted
    assert lim.admit(90.0, reserve=32000) is None
