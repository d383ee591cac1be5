"""`llmctl launch`'s pure parts: the arguments and environment of each agent, the
warnings, the Codex config rewrite, the agent key kept and reused, the pins setup.sh
installs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from llmctl import keys, launch
from llmctl.errors import StackError, UsageError
from llmctl.report import BackendReport, ManagedReport, StackReport

ROOT = Path(__file__).resolve().parents[2]


def stack(ctx=32768, trained=True, tools="qwen3_coder"):
    return StackReport(pid=1, proxy_url="http://127.0.0.1:8080", backends={
        "coder": ManagedReport(name="qwen3-coder", max_model_len=ctx, tools=tools,
                               tool_trained=trained),
        "general": ManagedReport(name="qwen3-8b", aliases=["general"], max_model_len=ctx,
                                 tools="hermes", tool_trained=True)})


def fixed_key(name):
    return f"sk-llmctl-{name}", False


@pytest.mark.parametrize("agent, argv, env", [
    ("claude", ("claude", "-p", "hi"), {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8080", "ANTHROPIC_API_KEY": "sk-llmctl-claude-code",
        "ANTHROPIC_MODEL": "qwen3-coder", "ANTHROPIC_DEFAULT_OPUS_MODEL": "qwen3-coder",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "qwen3-coder",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "qwen3-8b", "ANTHROPIC_SMALL_FAST_MODEL": "qwen3-8b",
        "CLAUDE_CODE_SUBAGENT_MODEL": "qwen3-coder", "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "32768",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "8192", "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"}),
    ("codex", ("codex", "-c", 'model_providers.llmctl.name="llmctl"',
               "-c", 'model_providers.llmctl.base_url="http://127.0.0.1:8080/v1"',
               "-c", 'model_providers.llmctl.env_key="LLMCTL_CODEX_API_KEY"',
               "-c", 'model_providers.llmctl.wire_api="responses"',
               "-c", 'model_provider="llmctl"', "-c", 'model="qwen3-coder"',
               "-c", "model_context_window=32768", "-p", "hi"),
     {"LLMCTL_CODEX_API_KEY": "sk-llmctl-codex"}),
])
def test_argv_and_environment(agent, argv, env):
    got = launch.prepare(launch.AGENTS[agent], stack(), args=("-p", "hi"), key=fixed_key)
    assert got.argv == argv and got.env == env and got.warnings == ()


def test_opencode_config_content():
    got = launch.prepare(launch.AGENTS["opencode"], stack(), key=fixed_key)
    content = json.loads(got.env["OPENCODE_CONFIG_CONTENT"])
    assert content == {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"llmctl": {
            "npm": "@ai-sdk/openai-compatible", "name": "llmctl",
            "options": {"baseURL": "http://127.0.0.1:8080/v1",
                        "apiKey": "{env:LLMCTL_OPENCODE_API_KEY}"},
            "models": {n: {"name": n, "tool_call": True,
                           "limit": {"context": 32768, "output": 4096}}
                       for n in ("qwen3-coder", "qwen3-8b")}}},
        "model": "llmctl/qwen3-coder", "small_model": "llmctl/qwen3-8b",
        "share": "disabled", "autoupdate": False}
    assert got.env["LLMCTL_OPENCODE_API_KEY"] == "sk-llmctl-opencode"


def test_overrides_by_name_or_alias_and_one_model_for_both():
    got = launch.prepare(launch.AGENTS["claude"], stack(), model="general", key=fixed_key)
    assert (got.model, got.small_model) == ("qwen3-8b", "qwen3-8b")
    one = StackReport(proxy_url="http://h:1", backends={
        "solo": ManagedReport(name="m", max_model_len=65536, tools="hermes", tool_trained=True)})
    got = launch.prepare(launch.AGENTS["claude"], one, key=fixed_key)
    assert (got.model, got.small_model) == ("m", "m")
    with pytest.raises(UsageError, match="no model 'x' in the running stack"):
        launch.prepare(launch.AGENTS["claude"], stack(), small_model="x", key=fixed_key)


def test_warnings_name_the_number_and_the_change():
    got = launch.prepare(launch.AGENTS["claude"], stack(ctx=4096, trained=False,
                                                        tools="hermes"), key=fixed_key)
    assert got.warnings[0] == (
        "coder: max_model_len 4,096 is too small for Claude Code, which sends ~12,000 tokens "
        "(12 tools and its system prompt) before the first word; set `max_model_len = 32768` "
        "under [models.coder] (on a model that holds it), or " + launch.PROFILE_HINT)
    assert got.warnings[1].startswith("coder: qwen3-coder was not trained for tool calls "
                                      "(it runs vLLM's generic hermes parser)")
    assert got.warnings[2].startswith("general: max_model_len 4,096")
    none = launch.prepare(launch.AGENTS["codex"], stack(tools=None, trained=None),
                          key=fixed_key)
    assert 'set `tools = "auto"` under [models.coder]' in none.warnings[0]
    # A url model's parsers are its server's: no warning is made up for it.
    remote = StackReport(proxy_url="http://h:1", backends={"coder": BackendReport(
        name="r", managed=False, max_model_len=131072)})
    assert launch.prepare(launch.AGENTS["claude"], remote, key=fixed_key).warnings == ()


def test_no_stack_is_the_up_hint():
    with pytest.raises(StackError) as e:
        launch.prepare(launch.AGENTS["claude"], None, key=fixed_key)
    assert e.value.hint == "start it with `llmctl up`"


def test_the_agent_key_is_made_once_and_kept_private(tmp_path):
    store, kp = tmp_path / "state" / "agent-keys.json", tmp_path / "keys.toml"
    secret, made = launch.agent_key("claude-code", store=store, keys_path=kp)
    assert made and keys.load(kp)["claude-code"].digest == keys.digest(secret)
    assert (store.stat().st_mode & 0o777) == 0o600
    assert launch.agent_key("claude-code", store=store, keys_path=kp) == (secret, False)
    # Rotated by hand: the stored secret no longer works, so it is rotated again (the
    # record, its limits and usage stay).
    keys.rotate("claude-code", kp)
    again, made = launch.agent_key("claude-code", store=store, keys_path=kp)
    assert made and again != secret
    assert keys.load(kp)["claude-code"].digest == keys.digest(again)


def test_run_execs_with_the_environment_minus_what_would_win():
    got = launch.prepare(launch.AGENTS["claude"], stack(), args=("-p", "x"), key=fixed_key)
    calls = []
    launch.run(got, "/bin/claude", environ={"ANTHROPIC_AUTH_TOKEN": "t", "HOME": "/h"},
               execvpe=lambda f, a, e: calls.append((f, a, e)))
    (f, argv, env), = calls
    assert (f, argv) == ("/bin/claude", ["/bin/claude", "-p", "x"])
    assert "ANTHROPIC_AUTH_TOKEN" not in env and env["HOME"] == "/h"
    assert env["ANTHROPIC_API_KEY"] == "sk-llmctl-claude-code"


@pytest.mark.parametrize("before", [
    "",
    'model = "gpt-5"\napproval_policy = "on-request"\n\n[model_providers.llmctl]\nname = "old"\n'
    'base_url = "http://old/v1"\n\n[mcp_servers.x]\ncommand = "y"\n',
])
def test_codex_config_rewrite_keeps_the_rest(before):
    out = launch.codex_toml(before, "http://127.0.0.1:8080", "qwen3-coder", 32768)
    data = tomllib.loads(out)
    assert data["model"] == "qwen3-coder" and data["model_provider"] == "llmctl"
    assert data["model_providers"]["llmctl"] == {
        "name": "llmctl", "base_url": "http://127.0.0.1:8080/v1",
        "env_key": "LLMCTL_CODEX_API_KEY", "wire_api": "responses"}
    if before:
        assert data["approval_policy"] == "on-request"
        assert data["mcp_servers"] == {"x": {"command": "y"}}


def test_setup_pins_the_versions_launch_names():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    for a in launch.AGENTS.values():
        assert re.search(re.escape(f"{a.npm}@{a.tested}") + r"\b", text), a.npm
