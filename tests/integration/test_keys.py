"""Named keys with limits and usage, as a user runs them: the whole daemon (url models on
two stand-in servers), `llmctl keys …` while it runs, requests over real sockets."""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import time

import httpx
import openai
import pytest

from llmctl import usage

from .conftest import start_upstream
from .test_cli_stack import KEY, Env


class KeyEnv(Env):
    def add(self, name: str, *args: str) -> str:
        r = self.run("keys", "add", name, *args)
        assert r.returncode == 0, r.stderr
        key = r.stdout.strip()
        assert key.startswith("sk-llmctl-") and "shown only now" in r.stderr
        return key

    def ask(self, key: str, model: str = "fake-general", **body) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": model, "max_tokens": 2,
                                "messages": [{"role": "user", "content": "hi"}], **body})

    def until(self, ok, timeout: float = 5.0):
        """What the daemon writes off the request path (usage) lands within a second or two."""
        deadline = time.monotonic() + timeout
        while not (result := ok()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        return result

    def usage(self, name: str) -> dict:
        rows = json.loads(self.run("keys", "list", "--json").stdout)["keys"]
        return next(r for r in rows if r["name"] == name)

    def requests(self, name: str) -> int:
        """A key's requests written to usage.db so far (0 before the first write)."""
        return (self.usage(name)["total"] or {}).get("requests", 0)


@pytest.fixture
def kenv(tmp_path):
    ups = [start_upstream("fake-coder"), start_upstream("fake-general")]
    e = KeyEnv(tmp_path)
    e.url_models({"coder": ("fake-coder", ups[0].url), "general": ("fake-general", ups[1].url)})
    r = e.run("up", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    yield e
    e.run("down")
    for u in ups:
        u.stop()


def test_a_new_key_works_at_once_and_the_config_key_still_does(kenv):
    key = kenv.add("alice")
    assert kenv.ask(key).status_code == 200  # no wait: live the moment `add` printed it
    assert kenv.ask(KEY).status_code == 200
    assert kenv.ask("sk-llmctl-not-a-key").status_code == 401


def test_requests_per_minute_hit_and_recovered_with_openai_headers(kenv):
    key = kenv.add("alice", "--rpm", "30")
    kenv.until(lambda: kenv.ask(key).status_code == 200)
    codes = [kenv.ask(key).status_code for _ in range(35)]
    assert 200 in codes and codes[-1] == 429
    r = kenv.ask(key)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "30 requests per minute" in err["message"]
    wait = int(r.headers["retry-after"])
    assert 1 <= wait <= 2  # 30 a minute: one every 2 s
    assert r.headers["x-ratelimit-limit-requests"] == "30"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    # The openai SDK sees a RateLimitError with the hint.
    client = openai.OpenAI(base_url=kenv.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="fake-general", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert int(e.value.response.headers["retry-after"]) >= 1
    # (The refill at Retry-After is checked exactly, in fake time, in test_limits.py.)
    # Another key is not touched by alice's limit.
    assert kenv.ask(KEY).status_code == 200
    # Every request of alice's is counted, and the refusals are her errors (401s before
    # the key reached the daemon were nobody's).
    ok_n, refused_n = codes.count(200) + 1, codes.count(429) + 2
    u = kenv.until(lambda: (x := kenv.usage("alice"))["total"]["requests"] == ok_n + refused_n
                   and x)
    assert u["total"]["errors"] == refused_n


def test_tokens_per_minute_count_the_answer_and_recover(kenv):
    key = kenv.add("bob", "--tpm", "1200")  # 20 tokens a second
    assert kenv.ask(key, max_tokens=1290).status_code == 200  # 3 + 1290: over by 93
    r = kenv.ask(key)
    assert r.status_code == 429 and "1200 tokens per minute" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 4 <= int(r.headers["retry-after"]) <= 5  # the refill: test_limits.py, fake time


def test_concurrency_limit(kenv):
    key = kenv.add("carol", "--max-concurrent", "1")
    kenv.until(lambda: kenv.ask(key).status_code == 200)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(kenv.ask, key, max_tokens=10, token_delay=0.1)  # ~1 s
        # carol's first request is in flight:
        kenv.until(lambda: 'llmctl_requests_in_flight{model="fake-general"} 1.0' in httpx.get(
            kenv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text)
        r = kenv.ask(key)
        assert r.status_code == 429 and "in flight" in r.json()["error"]["message"]
        assert slow.result().status_code == 200
    assert kenv.ask(key).status_code == 200


def test_a_key_limited_to_some_models_sees_only_those(kenv):
    key = kenv.add("dave", "--models", "general")
    kenv.until(lambda: kenv.ask(key).status_code == 200)
    r = kenv.ask(key, model="fake-coder")
    assert r.status_code == 404
    msg = r.json()["error"]["message"]
    assert "fake-general" in msg and "fake-coder" not in msg.split("known models:")[1]
    h = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(kenv.url + "/v1/models", headers=h).json()["data"]
    assert [m["id"] for m in listed] == ["fake-general"]
    assert httpx.get(kenv.url + "/v1/models/fake-coder", headers=h).status_code == 404
    status = httpx.get(kenv.url + "/api/status", headers=h).json()
    assert list(status["backends"]) == ["general"]
    # A named key sees its models' states and figures, not the daemon's insides.
    text = json.dumps(status)
    for secret in ('"pid"', '"log"', '"url"', '"port"', "proxy_counters", '"proxy_url"',
                   "127.0.0.1", str(kenv.home)):
        assert secret not in text, secret
    assert status["backends"]["general"]["state"] == "RUNNING"
    full = httpx.get(kenv.url + "/api/status", headers={"Authorization": f"Bearer {KEY}"})
    assert "proxy_counters" in full.json() and full.json()["daemon"]["pid"]
    # Starting and stopping models is for the config's keys.
    assert httpx.post(kenv.url + "/api/models/general/stop", headers=h).status_code == 403
    r = kenv.run("keys", "add", "eve", "--models", "nope")
    assert r.returncode == 2 and "no model 'nope'" in r.stderr


def test_revoke_rotate_and_expiry_while_running(kenv):
    key = kenv.add("frank")
    kenv.until(lambda: kenv.ask(key).status_code == 200)
    r = kenv.run("keys", "rotate", "frank")
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert kenv.ask(key).status_code == 401  # refused the moment `rotate` returned
    assert kenv.ask(new).status_code == 200
    assert kenv.run("keys", "revoke", "frank").returncode == 0
    assert kenv.ask(new).status_code == 401
    short = kenv.add("gina", "--expires", "2s")
    kenv.until(lambda: kenv.ask(short).status_code == 200)
    r = kenv.until(lambda: (x := kenv.ask(short)).status_code == 401 and x)
    assert "the key 'gina' expired" in r.json()["error"]["message"]
    assert kenv.run("keys", "revoke", "nobody").returncode == 2


def test_usage_is_counted_streamed_or_not_and_survives_a_restart(kenv):
    key = kenv.add("hana")
    kenv.until(lambda: kenv.ask(key, max_tokens=2).status_code == 200)  # 3 + 2
    # A stream whose client did not ask for usage: llmctl asks, counts, and takes it out.
    with httpx.stream("POST", kenv.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "fake-coder", "max_tokens": 4, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        body = r.read().decode()
    assert body.count("tok") == 4 and '"usage"' not in body and body.rstrip().endswith("[DONE]")
    # One that asked gets it, as sent.
    with httpx.stream("POST", kenv.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "fake-coder", "max_tokens": 1, "stream": True,
                            "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert '"completion_tokens": 1' in r.read().decode()
    want = {"requests": 3, "errors": 0, "prompt_tokens": 9, "completion_tokens": 7}
    u = kenv.until(lambda: (x := kenv.usage("hana"))["total"] == want and x)
    assert u["today"] == want and u["last_used"]
    assert u["per_model"]["fake-coder"]["requests"] == 2
    metrics = httpx.get(kenv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'llmctl_key_requests_total{key="hana",model="fake-coder",status="200"} 2.0' in metrics
    assert 'llmctl_key_tokens_total{key="hana",kind="completion",model="fake-coder"} 5.0' \
        in metrics
    assert key not in metrics
    table = kenv.run("keys", "list").stdout
    assert "hana" in table and "3 req, 16 tok" in table and key not in table
    # Written to disk off the request path, and read back after a restart.
    assert kenv.run("down").returncode == 0
    assert kenv.usage("hana")["total"] == want
    assert kenv.run("up", "--timeout", "30").returncode == 0
    kenv.until(lambda: kenv.ask(key).status_code == 200)
    kenv.until(lambda: kenv.usage("hana")["total"]["requests"] == 4)


def test_keys_stay_live_and_usage_is_kept_while_the_usage_file_is_locked(kenv):
    """Another reader holding usage.db locked (longer than a write waits) neither stops key
    changes nor the usage writes after it: the failure is logged, the batch kept."""
    key = kenv.add("ivan")
    assert kenv.ask(key).status_code == 200
    kenv.until(lambda: kenv.requests("ivan") == 1)
    db = sqlite3.connect(kenv.home / "state" / "usage.db", timeout=0, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        assert kenv.ask(key).status_code == 200
        time.sleep(4.5)  # two writes wait 2 s each and fail
        later = kenv.add("judy")
        assert kenv.ask(later).status_code == 200  # added while the writer is stuck
        assert kenv.run("keys", "revoke", "ivan").returncode == 0
        assert kenv.ask(key).status_code == 401
    finally:
        db.rollback()
        db.close()
    # The requests made while it was locked are written once the lock is gone.
    kenv.until(lambda: kenv.requests("judy") == 1, timeout=10)
    # ivan's second request (the 401 after the revoke is nobody's), though revoked since.
    assert usage.summary(kenv.home / "state" / "usage.db")["ivan"]["total"]["requests"] == 2
    log = (kenv.home / "logs" / "daemon.log").read_text()
    assert "the usage write failed (OperationalError: database is locked)" in log
    assert log.count("the usage write failed") == 1  # once, not once a second
    assert "the usage write works again" in log
