"""The walking skeleton, used the way a user uses it: up, chat, curl-like requests, down.

Tests run in file order against one shared stack; the last one stops it.
"""

from __future__ import annotations

import json

import httpx
import pytest

from llmctl import state as st

from .conftest import KEY

pytestmark = pytest.mark.e2e

QUESTION = "Write a Python function that returns the nth Fibonacci number."


def test_up_brings_both_backends_to_running(stack):
    r = stack.up_result
    assert r.returncode == 0, f"llmctl up failed:\n{r.stderr[-3000:]}"
    assert f"{stack.url}/v1" in r.stderr  # tells the user where the proxy is
    status = stack.status()
    assert status["daemon"]["running"] is True
    assert status["proxy_url"] == stack.url
    for key in ("coder", "general"):
        b = status["backends"][key]
        assert b["state"] == "RUNNING", b
        assert b["alive"] and b["pid"] and b["rss_bytes"] > 100 * 1024**2


def test_streamed_chat_through_the_proxy_with_the_key(stack):
    body = {"model": "smollm2-coder", "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": QUESTION}]}
    chunks, text = 0, []
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("x-request-id")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            for c in json.loads(line[6:])["choices"]:
                text.append(c["delta"].get("content") or "")
    answer = "".join(text)
    assert chunks > 5, "the answer should arrive in many SSE chunks"
    assert len(answer.strip()) > 20, answer


def test_non_streaming_completion_by_alias(stack):
    # The section name is an alias: IDE configs can say "general" on any machine.
    r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "general", "max_tokens": 24,
                         "messages": [{"role": "user", "content": "Name a colour."}]})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == "smollm2-general"
    assert data["choices"][0]["message"]["content"].strip()
    assert data["usage"]["completion_tokens"] > 0


def test_wrong_or_missing_key_is_401_in_openai_shape(stack):
    body = {"model": "smollm2-coder", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"Authorization": "Bearer sk-wrong"}, {}):
        r = httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers,
                       timeout=30)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404_listing_the_known_ones(stack):
    r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "gpt-4", "messages": []})
    assert r.status_code == 404
    msg = r.json()["error"]["message"]
    assert "smollm2-coder" in msg and "smollm2-general" in msg


def test_ready_and_models(stack):
    r = httpx.get(f"{stack.url}/ready", timeout=10)
    assert r.status_code == 200
    assert r.json()["models"] == {"smollm2-coder": "RUNNING", "smollm2-general": "RUNNING"}
    r = httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                  timeout=10)
    assert [m["id"] for m in r.json()["data"]] == ["smollm2-coder", "smollm2-general"]


def test_chat_one_shot_from_a_pipe(stack):
    r = stack.llmctl("chat", "--model", "coder", "--max-tokens", "40", input=QUESTION + "\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 20, r.stdout


def test_up_again_says_already_up(stack):
    r = stack.llmctl("up", timeout=60)
    assert r.returncode == 0
    assert "already up" in r.stderr


def test_down_leaves_no_process_and_frees_the_ports(stack):
    before = stack.status()
    pgids = [b["pgid"] for b in before["backends"].values()]
    daemon_pid = before["daemon"]["pid"]
    assert all(st.group_pids(g) for g in pgids)
    r = stack.llmctl("down", timeout=180)
    assert r.returncode == 0, r.stderr
    assert not st.pid_alive(daemon_pid)
    for g in pgids:
        assert st.group_pids(g) == [], f"processes of group {g} are still running"
    for port in (stack.proxy_port, stack.coder_port, stack.general_port):
        assert st.port_free(port), port
    after = stack.status()
    assert after["daemon"]["running"] is False and after["backends"] == {}
