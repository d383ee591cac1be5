"""Agents on the real demo stack: forced tool calls parsed by vLLM on SmolLM2 (started with
its tool-call parser), through both APIs; and the real Claude Code CLI through `llmctl
launch` for one `-p` round trip, with its tools and long system prompt left out (its
default request, ~12k tokens, cannot fit the demo's 2,048-token context: that request is
proven against the stand-in in tests/integration/test_agents_real.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from ..agents import agent_binary
from .conftest import KEY, LLMCTL, ROOT

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_forced_tool_calls_come_back_parsed_through_chat_and_messages(stack):
    tools = [{"type": "function", "function": {"name": "get_weather",
                                               "description": "The weather in a city",
                                               "parameters": SCHEMA}}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = httpx.post(f"{stack.url}/v1/chat/completions", headers=AUTH, timeout=180, json={
            "model": "smollm2-coder", "messages": ASK, "tools": tools, "tool_choice": choice,
            "max_tokens": 64, "temperature": 0})
        assert r.status_code == 200, r.text
        [call] = r.json()["choices"][0]["message"]["tool_calls"][:1]
        assert call["function"]["name"] == "get_weather"
        json.loads(call["function"]["arguments"])  # JSON (what is in it is up to a 135M model)
    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": SCHEMA}]
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        r = httpx.post(f"{stack.url}/v1/messages", headers={"x-api-key": KEY}, timeout=180,
                       json={"model": "smollm2-coder", "messages": ASK, "tools": tools,
                             "tool_choice": choice, "max_tokens": 64, "temperature": 0})
        assert r.status_code == 200, r.text
        uses = [b for b in r.json()["content"] if b["type"] == "tool_use"]
        assert uses and uses[0]["name"] == "get_weather" and "input" in uses[0]


def test_claude_code_round_trip_through_launch_on_the_demo(stack, tmp_path):
    binary = agent_binary("claude")
    if binary is None:
        pytest.skip("claude is not installed (bash scripts/setup.sh --dev installs it)")
    env = {**stack.env, "HOME": str(tmp_path / "home"),
           "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.monotonic()
    r = subprocess.run([*LLMCTL, "launch", "claude", "--", "-p", "Say hello.", "--tools", "",
                        "--system-prompt", "Be brief."], env=env, cwd=ROOT, text=True,
                       capture_output=True, timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), r.stderr[-3000:]  # the demo model's answer, printed by Claude Code
    assert "launching Claude Code" in r.stderr
    # Warned before the launch: the demo's context and a model not trained for tools.
    assert "2,048" in r.stderr or "2048" in r.stderr
    print(f"\n[e2e] claude -p through launch: {took:.0f} s, {len(r.stdout)} characters")
    deadline = time.monotonic() + 10  # usage is written once a second
    while True:
        rows = json.loads(subprocess.run([*LLMCTL, "keys", "list", "--json"], env=stack.env,
                                         text=True, capture_output=True, timeout=60).stdout)
        [mine] = [k for k in rows["keys"] if k["name"] == "claude-code"]
        if (mine["total"] or {}).get("requests", 0) >= 1:
            break
        assert time.monotonic() < deadline, mine
