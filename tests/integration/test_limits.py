"""Key limits in fake time: the proxy over real sockets in front of the stand-in server,
with a clock the test sets (the proxy's `clock=` seam), so every Retry-After and every
refill is checked exactly, without waiting for a second to pass."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from llmctl import keys

from .conftest import KEY, FakeBackend, FakeClock, model_for


def chat(**kw):
    return {"model": "fake-coder", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.fixture
def limited(upstream, make_proxy, tmp_path):
    clock = FakeClock()
    path = tmp_path / "keys.toml"

    def make(**limits) -> tuple[str, object]:
        key, _ = keys.add("alice", p=path, **limits)
        proxy = make_proxy([FakeBackend(model_for(upstream), served={"max_model_len": 2048})],
                           clock=clock, keys_path=path)
        return key, proxy

    return clock, make


def ask(proxy, key: str, **kw) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json=chat(**kw),
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_requests_per_minute_refill_exactly_at_retry_after(limited):
    clock, make = limited
    key, proxy = make(rpm=30)  # a bucket of 30, refilled one every 2 s
    assert [ask(proxy, key).status_code for _ in range(30)] == [200] * 30
    r = ask(proxy, key)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.headers["retry-after-ms"] == "2000"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 1.99  # not quite one refill yet
    assert ask(proxy, key).status_code == 429
    clock.now += 0.01
    ok = ask(proxy, key)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ask(proxy, key).status_code == 429  # that one refill is spent


def test_tokens_per_minute_spent_after_the_answer_then_refilled(limited):
    clock, make = limited
    key, proxy = make(tpm=1200)  # 20 tokens a second
    # The stand-in answers max_tokens tokens after a 3-token prompt: 3 + 1290 = 1293.
    assert ask(proxy, key, max_tokens=1290).status_code == 200
    r = ask(proxy, key)
    assert r.status_code == 429 and "1200 tokens per minute" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    # 93 tokens over, and the 2 it asks for are needed: 4.75 s of refill at 20 a second.
    assert r.headers["retry-after"] == "5" and r.headers["retry-after-ms"] == "4750"
    clock.now += 4.74
    assert ask(proxy, key).status_code == 429
    clock.now += 0.02
    assert ask(proxy, key).status_code == 200


def test_parallel_requests_cannot_overshoot_tpm_together(limited):
    """Each request holds what it asks for while it runs: 20 at once against tpm=50 get one
    answer (an untouched window admits one, whatever it asks), not 20 × 110 tokens."""
    clock, make = limited
    key, proxy = make(tpm=50)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: ask(proxy, key, max_tokens=107, token_delay=0.01)
                              .status_code, range(20)))
    assert sorted(codes) == [200] + [429] * 19
    r = ask(proxy, key, max_tokens=107)
    assert "(this request may use 107)" in r.json()["error"]["message"]
    clock.now += 140  # -60 → 50 takes 132 s: then an agent's 32,000 still gets its turn
    r = ask(proxy, key, max_tokens=32000)  # (lowered to the model's 2048 on the way)
    assert r.status_code == 200 and r.headers["x-llmctl-capped"] == "max_tokens=32000->2048"


def key_tokens(proxy, kind: str) -> float:
    text = httpx.get(proxy.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    line = f'llmctl_key_tokens_total{{key="alice",kind="{kind}",model="fake-coder"}} '
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


@pytest.mark.parametrize("flags", [{"stream": "true"}, {"stream": 1},
                                   {"stream": True, "stream_options": {"include_usage": "false"}},
                                   {"stream": "yes", "stream_options": {"include_usage": 0}}])
def test_usage_is_counted_whatever_spelling_of_stream_vllm_accepts(limited, flags):
    clock, make = limited
    key, proxy = make(tpm=6000)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=30,
                      json=chat(max_tokens=4, **flags),
                      headers={"Authorization": f"Bearer {key}"}) as r:
        body = r.read().decode()
    assert body.count("tok") == 4 and '"usage"' not in body  # not asked for: taken out
    assert key_tokens(proxy, "completion") == 4 and key_tokens(proxy, "prompt") == 3


def test_a_stream_cut_before_its_usage_is_charged_for_what_was_sent(limited):
    clock, make = limited
    key, proxy = make(tpm=6000)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", timeout=30,
                      json=chat(max_tokens=500, stream=True, token_delay=0.02),
                      headers={"Authorization": f"Bearer {key}"}) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: {")
            if got == 10:
                break  # the client hangs up
    deadline = time.monotonic() + 10
    while key_tokens(proxy, "completion") == 0:
        assert time.monotonic() < deadline, "a cut stream was charged nothing"
        time.sleep(0.05)
    assert 10 <= key_tokens(proxy, "completion") < 100  # the events sent, not the 500 asked
    assert key_tokens(proxy, "prompt") > 0  # ~4 bytes a token of what was sent


def test_an_expired_key_is_refused_from_the_second_it_expires(limited, tmp_path):
    clock, make = limited
    path = tmp_path / "keys.toml"
    key, proxy = make(rpm=0)
    # keys.add wrote wall time; the fake clock decides when "now" is.
    rec = keys.load(path)["alice"]
    import dataclasses

    keys.save({"alice": dataclasses.replace(rec, expires=clock.now + 60)}, path)
    proxy.app.callers.reload()
    assert ask(proxy, key).status_code == 200
    clock.now += 60
    r = ask(proxy, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
