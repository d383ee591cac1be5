"""`llmctl launch`: what each agent is given (env, arguments, config), its named key (made
once, reused, accepted by the proxy), the warnings, the errors, and the exec itself — on a
real stack of stand-in vLLM servers. Agents are stood in for by a script that records what
it was run with; the real CLIs are in test_agents_real.py."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import httpx
import pytest

from .test_cli_stack import Env

AGENT_SCRIPT = """#!{python}
import json, os, sys
json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, open({out!r}, "w"))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("launch"))
    r = e.run("up", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    yield e
    e.run("down")


def fake_agent(tmp: Path, name: str) -> tuple[Path, Path]:
    """A folder holding an executable `name` that records its argv and env, and the file."""
    folder = tmp / "bin"
    folder.mkdir(exist_ok=True)
    out = tmp / f"{name}.json"
    script = folder / name
    script.write_text(AGENT_SCRIPT.format(python=sys.executable, out=str(out)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder, out


def exports(text: str) -> dict[str, str]:
    import shlex

    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            k, _, v = line.removeprefix("export ").partition("=")
            out[k] = shlex.split(v)[0] if v else ""
    return out


def test_claude_print_gives_the_environment_and_warns_before(stack):
    r = stack.run("launch", "claude", "--print")
    assert r.returncode == 0, r.stderr
    env = exports(r.stdout)
    assert env["ANTHROPIC_BASE_URL"] == stack.url
    assert env["ANTHROPIC_API_KEY"].startswith("sk-llmctl-")
    assert env["ANTHROPIC_MODEL"] == "fake-coder"
    assert env["ANTHROPIC_SMALL_FAST_MODEL"] == env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == \
        "fake-general"
    assert env["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["DISABLE_TELEMETRY"] == "1"
    assert "unset ANTHROPIC_AUTH_TOKEN" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1] == "claude"
    # The two stand-ins run at 4,096 tokens on the generic parser: both warnings, with
    # the number and the change.
    assert "coder: max_model_len 4,096 is too small for Claude Code" in r.stderr
    assert "set `max_model_len = 32768` under [models.coder]" in r.stderr
    assert "coder: fake-coder was not trained for tool calls" in r.stderr
    assert "`llmctl config init --profile agents`" in r.stderr


def test_the_key_is_made_once_reused_and_accepted_by_the_proxy(stack):
    first = exports(stack.run("launch", "claude", "--print").stdout)["ANTHROPIC_API_KEY"]
    again = exports(stack.run("launch", "claude", "--print").stdout)["ANTHROPIC_API_KEY"]
    assert first == again
    listed = json.loads(stack.run("keys", "list", "--json").stdout)
    names = [k["name"] for k in (listed if isinstance(listed, list) else listed["keys"])]
    assert names.count("claude-code") == 1
    kept = stack.home / "state" / "agent-keys.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    r = httpx.get(stack.url + "/v1/models", headers={"Authorization": f"Bearer {first}"},
                  timeout=10)
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["data"]}
    assert models["fake-coder"]["tools"] == {"parser": "hermes", "trained": False}
    # Revoked by hand: the next launch makes it again rather than hand out a dead key.
    assert stack.run("keys", "revoke", "claude-code").returncode == 0
    new = exports(stack.run("launch", "claude", "--print").stdout)["ANTHROPIC_API_KEY"]
    assert new != first
    assert httpx.get(stack.url + "/v1/models", headers={"Authorization": f"Bearer {new}"},
                     timeout=10).status_code == 200


def test_codex_print_sets_a_provider_by_overrides(stack):
    r = stack.run("launch", "codex", "--print", "--model", "general", "--", "exec", "hi")
    assert r.returncode == 0, r.stderr
    env = exports(r.stdout)
    assert env["LLMCTL_CODEX_API_KEY"].startswith("sk-llmctl-")
    import shlex

    argv = shlex.split(r.stdout.rstrip().splitlines()[-1])
    assert argv[0] == "codex" and argv[-2:] == ["exec", "hi"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert f'model_providers.llmctl.base_url="{stack.url}/v1"' in sets
    assert 'model_providers.llmctl.wire_api="responses"' in sets
    assert 'model_providers.llmctl.env_key="LLMCTL_CODEX_API_KEY"' in sets
    assert 'model_provider="llmctl"' in sets and 'model="fake-general"' in sets
    assert "model_context_window=4096" in sets


def test_opencode_print_gives_its_config_content(stack):
    r = stack.run("launch", "opencode", "--print", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    content = json.loads(data["env"]["OPENCODE_CONFIG_CONTENT"])
    provider = content["provider"]["llmctl"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {"baseURL": stack.url + "/v1",
                                   "apiKey": "{env:LLMCTL_OPENCODE_API_KEY}"}
    assert data["env"]["LLMCTL_OPENCODE_API_KEY"].startswith("sk-llmctl-")
    assert content["model"] == "llmctl/fake-coder"
    assert content["small_model"] == "llmctl/fake-general"
    assert provider["models"]["fake-coder"]["limit"]["context"] == 4096
    assert data["key"] == "opencode" and data["argv"] == ["opencode"]


def test_launch_execs_the_agent_with_its_environment(stack, tmp_path):
    folder, out = fake_agent(tmp_path, "claude")
    stack.env["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    stack.env["ANTHROPIC_AUTH_TOKEN"] = "someone-elses"
    try:
        r = stack.run("launch", "claude", "--", "-p", "hi", "--tools", "")
    finally:
        del stack.env["ANTHROPIC_AUTH_TOKEN"]
        stack.env["PATH"] = os.environ["PATH"]
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert got["argv"][1:] == ["-p", "hi", "--tools", ""]
    assert got["env"]["ANTHROPIC_BASE_URL"] == stack.url
    assert "ANTHROPIC_AUTH_TOKEN" not in got["env"]  # it would be sent instead of our key
    assert "launching Claude Code → " + stack.url in r.stderr


def test_an_agent_not_installed_is_one_line_with_its_install_command(stack, tmp_path):
    stack.env["PATH"] = str(tmp_path)  # python itself is run by its full path
    try:
        r = stack.run("launch", "codex")
    finally:
        stack.env["PATH"] = os.environ["PATH"]
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].endswith("Codex is not installed ('codex' is not on PATH)")
    assert "npm install -g @openai/codex@0.171.0" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unknown_model_or_agent(stack):
    r = stack.run("launch", "claude", "--print", "--model", "nope")
    assert r.returncode == 2 and "no model 'nope' in the running stack" in r.stderr
    r = stack.run("launch", "aider", "--print")
    assert r.returncode == 2 and "no agent 'aider'" in r.stderr


def test_write_config_merges_into_the_agents_file_and_keeps_a_backup(stack, tmp_path):
    home = tmp_path / "home"
    settings = home / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"theme": "dark", "env": {"FOO": "1"}}))
    stack.env["HOME"] = str(home)
    try:
        r = stack.run("launch", "claude", "--print", "--write-config")
    finally:
        stack.env["HOME"] = os.environ["HOME"]
    assert r.returncode == 0, r.stderr
    data = json.loads(settings.read_text())
    assert data["theme"] == "dark" and data["env"]["FOO"] == "1"
    assert data["env"]["ANTHROPIC_BASE_URL"] == stack.url
    backups = list(settings.parent.glob("settings.json.llmctl-backup-*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text())["theme"] == "dark"
    assert f"wrote {settings} (the old one: {backups[0]})" in r.stderr


def test_without_a_stack_the_up_hint(tmp_path):
    e = Env(tmp_path)
    r = e.run("launch", "claude", "--print")
    assert r.returncode == 1
    assert "the stack is not running" in r.stderr and "`llmctl up`" in r.stderr
