"""docs/agents.md's snippets are what the code does: the Claude Code environment, the Codex
config and the OpenCode config are `llmctl launch`'s own for the agent profile, the llmctl
configs parse (and the profile's is `config init --profile agents`), the Continue and
aider blocks point at the proxy and at real model names."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

from llmctl import build, config, launch, tools
from llmctl.report import ManagedReport, StackReport

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "agents.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.S)
ROOT_URL = "http://127.0.0.1:8080"
(PROFILE,) = config.profile_models("agents")
NAMES = set(PROFILE.names) | {"qwen3-8b"}


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def profile_launch(agent: str) -> launch.Launch:
    stack = StackReport(proxy_url=ROOT_URL, backends={"coder": ManagedReport(
        name=PROFILE.name, aliases=list(PROFILE.names[1:]), max_model_len=PROFILE.max_model_len,
        tools="qwen3_coder", tool_trained=True)})
    return launch.prepare(launch.AGENTS[agent], stack, key=lambda n: ("sk-llmctl-…", False))


def test_every_kind_is_there():
    assert {k for k, _ in BLOCKS} >= {"json", "toml", "yaml", "console"}
    assert ROOT_URL == config.Config().proxy_url


def test_json_snippets_are_launchs_own():
    claude, opencode = (json.loads(b) for b in blocks("json"))
    assert claude == {"env": profile_launch("claude").env}
    got = profile_launch("opencode")
    assert opencode == json.loads(got.env["OPENCODE_CONFIG_CONTENT"])


def test_toml_snippets_are_llmctl_configs_or_launchs_codex_config():
    profile_seen = codex_seen = stored_seen = 0
    for body in blocks("toml"):
        raw = tomllib.loads(body)
        if "model_providers" in raw:
            assert raw == tomllib.loads(launch.codex_toml("", ROOT_URL, PROFILE.name,
                                                         PROFILE.max_model_len))
            codex_seen += 1
            continue
        cfg = config.parse(raw)
        vllm = build.package_dir()
        assert vllm is None or build.parser_errors(cfg, vllm) == []
        for m in cfg.models:
            assert tools.detect(tools.ModelFiles(m.source)).trained, m.source
        if len(cfg.models) == 1 and cfg.models[0].store_responses:
            # The Responses API storing example: the profile's model, opted in.
            assert cfg.models[0].source == PROFILE.source
            stored_seen += 1
        elif len(cfg.models) == 1:
            assert cfg.models[0] == PROFILE
            profile_seen += 1
    assert (profile_seen, codex_seen, stored_seen) == (1, 1, 1)


def test_yaml_snippets_point_at_the_proxy_and_real_names():
    continue_, aider = (yaml.safe_load(b) for b in blocks("yaml"))
    (m,) = continue_["models"]
    assert m["apiBase"] == ROOT_URL + "/v1" and m["model"] in NAMES
    assert "tool_use" in m["capabilities"]
    assert aider["openai-api-base"] == ROOT_URL + "/v1"
    assert {aider["model"].removeprefix("openai/"),
            aider["weak-model"].removeprefix("openai/")} <= NAMES


def test_the_readme_links_it():
    assert "docs/agents.md" in (ROOT / "README.md").read_text()
