"""Key limits in fake time: the proxy over real sockets in front of the stand-in server,
with a clock the test sets (the proxy's `clock=` seam), so every Retry-After and every
refill is checked exactly, without waiting for a second to pass."""

from __future__ import annotations

import httpx
import pytest

from llmctl import keys

from .conftest import FakeBackend, FakeClock, model_for


def chat(**kw):
    return {"model": "fake-coder", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.fixture
def limited(upstream, make_proxy, tmp_path):
    clock = FakeClock()
    path = tmp_path / "keys.toml"

    def make(**limits) -> tuple[str, object]:
        key, _ = keys.add("alice", p=path, **limits)
        proxy = make_proxy([FakeBackend(model_for(upstream))], clock=clock, keys_path=path)
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
    key, proxy = make(tpm=6000)  # 100 tokens a second
    # The stand-in answers max_tokens tokens after a 3-token prompt: 3 + 6090 = 6093.
    assert ask(proxy, key, max_tokens=6090).status_code == 200
    r = ask(proxy, key)
    assert r.status_code == 429 and "6000 tokens per minute" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    # 93 tokens over, and one more is needed: 0.94 s of refill at 100 a second.
    assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "940"
    clock.now += 0.93
    assert ask(proxy, key).status_code == 429
    clock.now += 0.02
    assert ask(proxy, key).status_code == 200


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
