"""Models on demand, with the whole daemon for real and the stand-in server as the engine
(it takes a second to start, so starts, idle stops and group swaps run in seconds):
`start = "on-demand"`, `idle_stop`, `group`, `Prefer: wait=0`, `llmctl start|stop`."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import openai
import pytest

from llmctl.logs import START_MARK

from .conftest import free_port
from .test_cli_stack import KEY, Env

H = {"Authorization": f"Bearer {KEY}"}


class DemandEnv(Env):
    """coder always on; `a` and `b` on demand in group "big" (a second to start each;
    `b` stops after 3 s idle); `broken` on demand, and its start fails."""

    def __init__(self, tmp):
        super().__init__(tmp)
        cfg = self.home / "config.toml"
        text = cfg.read_text().split("[models.general]")[0]
        self.more = [free_port() for _ in range(3)]
        model = tmp / "model"
        members = {"a": (["--startup-delay", "1"], 'group = "big"'),
                   "b": (["--startup-delay", "1", "--token-delay", "0.05"],
                         'group = "big"\nidle_stop = "3s"'),
                   "broken": (["--exit-at-start", "3"], "")}
        for (key, (args, extra)), port in zip(members.items(), self.more, strict=True):
            text += (f'\n[models.{key}]\nname = "fake-{key}"\nsource = "{model}"\n'
                     f'port = {port}\nargs = {json.dumps(args)}\nstart = "on-demand"\n{extra}\n')
        cfg.write_text(text)

    def ask(self, model: str, headers: dict | None = None, **body) -> httpx.Response:
        return httpx.post(self.url + "/v1/completions", headers={**H, **(headers or {})},
                          json={"model": model, "prompt": "hi", "max_tokens": 2, **body},
                          timeout=60)

    def states(self) -> dict[str, str]:
        return {k: b["state"] for k, b in self.status()["backends"].items()}

    def wait_state(self, key: str, want: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            b = self.status()["backends"][key]
            if b["state"] == want:
                return b
            assert time.monotonic() < deadline, f"{key} is {b['state']}, not {want}"
            time.sleep(0.1)

    def wait_for(self, key: str, ok, timeout: float = 5) -> dict:
        deadline = time.monotonic() + timeout
        while not ok(b := self.status()["backends"][key]):
            assert time.monotonic() < deadline, b
            time.sleep(0.1)
        return b

    def starts(self, key: str) -> int:
        """How many times the server was started: one mark per start in its log."""
        return (self.home / "logs" / f"{key}.log").read_text().count(START_MARK)


@pytest.fixture
def denv(tmp_path):
    e = DemandEnv(tmp_path)
    r = e.run("up", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert "on demand: fake-a, fake-b, fake-broken" in r.stderr
    yield e
    e.run("down")


def test_up_starts_only_the_always_on_model_and_status_says_on_demand(denv):
    assert denv.states() == {"coder": "RUNNING", "a": "STOPPED", "b": "STOPPED",
                             "broken": "STOPPED"}
    table = denv.run("status").stdout
    assert table.count("STOPPED (on demand)") == 3
    models = httpx.get(denv.url + "/v1/models", headers=H).json()["data"]
    assert {m["id"]: (m["state"], m["start"], m["group"]) for m in models} == {
        "fake-coder": ("RUNNING", "always", None), "fake-a": ("STOPPED", "on-demand", "big"),
        "fake-b": ("STOPPED", "on-demand", "big"), "fake-broken": ("STOPPED", "on-demand", None)}


def test_concurrent_first_requests_share_one_start_and_all_succeed(denv):
    before = denv.status()["backends"]["a"]
    assert before["state"] == "STOPPED" and before["pid"] is None  # no server to answer
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: denv.ask("fake-a"), range(8)))
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
    assert all(r.json()["choices"][0]["text"] == "tok0 tok1 " for r in answers)
    # Answered by a server that was not there when they were sent: they waited for its one
    # start, which all eight shared.
    assert denv.starts("a") == 1
    b = denv.wait_for("a", lambda b: b["last_request_at"] and b["stops_at"])  # ≤ 1 s behind
    assert b["state"] == "RUNNING"
    # A streaming client gets its first byte when the model answers, not before.
    with httpx.stream("POST", denv.url + "/v1/completions", headers=H, timeout=30,
                      json={"model": "fake-a", "prompt": "x", "max_tokens": 2,
                            "stream": True}) as r:
        assert r.status_code == 200 and b"[DONE]" in r.read()


def test_prefer_wait_0_gets_503_with_retry_after_and_the_start_goes_on(denv):
    r = denv.ask("fake-a", headers={"Prefer": "wait=0"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_starting"
    assert int(r.headers["retry-after"]) >= 1
    denv.wait_state("a", "RUNNING")
    assert denv.ask("fake-a", headers={"Prefer": "wait=0"}).status_code == 200


def test_a_group_swap_drains_in_flight_requests_without_cutting_them(denv):
    assert denv.ask("fake-b").status_code == 200
    # A stream of 40 tokens at 50 ms each is under way on b when a request for a comes.
    events: list[str] = []

    def long_stream() -> str:
        with httpx.stream("POST", denv.url + "/v1/completions", headers=H, timeout=60,
                          json={"model": "fake-b", "prompt": "x", "max_tokens": 40,
                                "stream": True}) as r:
            body = r.read().decode()
        events.append("b finished")
        return body

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stream = pool.submit(long_stream)
        time.sleep(0.5)
        other = pool.submit(lambda: (denv.ask("fake-a"), events.append("a answered"))[0])
        body, answer = stream.result(), other.result()
    assert answer.status_code == 200
    assert body.count("tok") == 40 and body.rstrip().endswith("data: [DONE]")
    assert events == ["b finished", "a answered"]
    s = denv.status()["backends"]
    assert s["a"]["state"] == "RUNNING"
    assert s["b"]["state"] == "STOPPED" and "swapped out for fake-a" in s["b"]["reason"]
    assert s["b"]["pid"] is None or not s["b"]["alive"]
    # Swapping back: b starts again on its next request, and a is swapped out.
    assert denv.ask("fake-b").status_code == 200
    assert denv.states()["a"] == "STOPPED" and denv.starts("b") == 2


def test_idle_stop(denv):
    assert denv.ask("fake-b").status_code == 200
    b = denv.wait_for("b", lambda b: b["stops_at"])
    assert b["idle_stop_s"] == 3 and b["stops_at"] - b["last_request_at"] == pytest.approx(3, abs=0.5)
    assert "in " in denv.run("status").stdout  # the IDLE STOP column
    b = denv.wait_state("b", "STOPPED", timeout=15)
    assert "after 3s without a request" in b["reason"] and not b["alive"]
    assert denv.status()["backends"]["b"]["resting"]


def test_a_start_that_fails_gives_the_waiting_clients_the_cause(denv):
    r = denv.ask("fake-broken")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "model_failed" and "port in use" in err["message"], err
    again = denv.ask("fake-broken")
    assert again.status_code == 503 and "llmctl start broken" in again.json()["error"]["message"]
    assert denv.starts("broken") == 1  # it is not started again by every request
    # Everything else is untouched.
    assert denv.ask("fake-coder").status_code == 200


def test_start_and_stop_by_hand(denv):
    r = denv.run("start", "a")
    assert r.returncode == 0, r.stderr
    assert "a (fake-a) answers" in r.stderr
    assert denv.states()["a"] == "RUNNING"
    r = denv.run("stop", "fake-a")
    assert r.returncode == 0, r.stderr
    assert "STOPPED" in r.stderr and denv.states()["a"] == "STOPPED"
    # The always-on model, stopped by hand, stays stopped: no request starts it.
    assert denv.run("stop", "coder").returncode == 0
    r = denv.ask("fake-coder")
    assert r.status_code == 503 and "llmctl start coder" in r.json()["error"]["message"]
    # What it is, and no retries: it will not come back by itself.
    assert r.json()["error"]["code"] == "model_stopped"
    assert r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers
    client = openai.OpenAI(base_url=denv.url + "/v1", api_key=KEY, max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake-coder", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 2  # the SDK did not wait and retry
    assert denv.run("start", "coder").returncode == 0
    assert denv.ask("fake-coder").status_code == 200
    # Bad input is one line.
    r = denv.run("start", "nope")
    assert r.returncode == 2 and "no model 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = denv.run("start", "broken")
    assert r.returncode == 1 and "broken failed to start" in r.stderr


def test_control_endpoints_take_a_key_and_vllm_sleep_routes_are_not_forwarded(denv):
    assert httpx.post(denv.url + "/api/models/fake-a/start").status_code == 401
    for path in ("/sleep?level=1", "/wake_up", "/v1/../sleep"):
        r = httpx.post(denv.url + path, headers=H)
        assert r.status_code in (404, 405), path
    port = denv.status()["backends"]["coder"]["port"]
    stats = httpx.get(f"http://127.0.0.1:{port}/control/stats").json()
    assert stats["sleeps"] == 0 and stats["wakes"] == 0


def test_up_refuses_a_group_member_config_that_does_not_fit(tmp_path):
    e = Env(tmp_path)
    cfg = e.home / "config.toml"
    cfg.write_text(cfg.read_text().replace('[models.general]', '[models.general]\nstart = '
                                           '"on-demand"\nidle_stop = "1x"'))
    r = e.run("up")
    assert r.returncode == 1 and "idle_stop" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(e.run("status", "--json").stdout)["daemon"]["running"] is False
