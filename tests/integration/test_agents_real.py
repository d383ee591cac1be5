"""The real agent CLIs (the versions scripts/setup.sh --dev pins, found by tests/agents.py)
through `llmctl launch`, with their full default prompts and tools, against a stack of
`url` models on the stand-in upstream (tests/fakes/upstream.py).

The stand-in speaks `POST /v1/messages` (Claude Code) and `POST /v1/responses` (Codex) as
vLLM 0.32 does; what it saw proves the agents' real request shapes went through the
proxy: the route and query string, the agent's key kept from the upstream, the size of
the default prompt and the number of tools."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ..agents import agent_binary
from .conftest import start_upstream
from .test_cli_stack import Env


@pytest.fixture
def agent_stack(tmp_path):
    up = start_upstream("fake-coder")
    e = Env(tmp_path)
    e.url_models({"coder": ("fake-coder", up.url, "max_model_len = 32768")})
    e.env["HOME"] = str(tmp_path / "home")  # the agents write their own state there
    r = e.run("up", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    yield e, up
    e.run("down")
    up.stop()


def _launch(e: Env, agent: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    binary = agent_binary(agent)
    if binary is None:
        pytest.skip(f"{agent} is not installed (bash scripts/setup.sh --dev installs it)")
    e.env["PATH"] = f"{binary.parent}{os.pathsep}{os.environ['PATH']}"
    return e.run("launch", agent, "--", *args, timeout=timeout)


def test_claude_code_round_trip_through_launch(agent_stack):
    e, up = agent_stack
    r = _launch(e, "claude", "-p", "hi")  # its full default tools and system prompt
    assert r.returncode == 0, r.stderr
    assert "tok0" in r.stdout  # the stand-in's answer, printed by Claude Code
    assert "launching Claude Code" in r.stderr
    seen = up.stats()
    assert "/v1/messages?beta=true" in seen["paths"]
    assert seen["most_tools"] >= 10 and seen["largest_body"] > 20_000  # the real prompt
    sent = json.dumps(seen["last_headers"]).lower()
    assert "x-api-key" not in sent and "sk-llmctl-" not in sent  # its key stays here
    usage = json.loads(e.run("keys", "list", "--json").stdout)["keys"]
    assert any(k["name"] == "claude-code" for k in usage)


def test_codex_round_trip_through_launch(agent_stack):
    e, up = agent_stack
    r = _launch(e, "codex", "exec", "--skip-git-repo-check", "hi")
    assert r.returncode == 0, r.stderr
    assert "launching Codex" in r.stderr
    assert "tok0" in r.stdout + r.stderr
    seen = up.stats()
    assert "/v1/responses" in seen["paths"]
    assert seen["largest_body"] > 5_000  # its own instructions


def test_opencode_round_trip_through_launch(agent_stack):
    e, up = agent_stack
    r = _launch(e, "opencode", "run", "hi")
    assert r.returncode == 0, r.stderr
    assert "launching OpenCode" in r.stderr
    assert "tok0" in r.stdout
    seen = up.stats()
    assert "/v1/chat/completions" in seen["paths"]
    assert seen["most_tools"] >= 5 and seen["largest_body"] > 10_000  # its prompt and tools
    assert "sk-llmctl-" not in json.dumps(seen["last_headers"])
