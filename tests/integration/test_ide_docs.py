"""docs/ide-integration.md's snippets, checked: every JSON, YAML and TOML block parses and
points at the proxy's real base URL and model names; every Python block runs against a
running proxy (url models on local stand-ins)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from llmctl import config

from .conftest import start_upstream
from .test_cli_stack import KEY, Env

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "ide-integration.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.S)
BASE = "http://127.0.0.1:8080/v1"
DEFAULT = config.parse({}, device="cuda")
NAMES = {n for m in DEFAULT.models for n in m.names} | {"complete"}  # + the FIM example


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def test_the_doc_has_a_snippet_of_each_checkable_kind():
    assert {k for k, _ in BLOCKS} >= {"python", "yaml", "json", "toml", "lua", "elisp"}
    assert BASE == config.Config().proxy_url + "/v1"  # the default address the docs use


def test_json_and_yaml_snippets_point_at_the_proxy_and_real_model_names():
    for body in blocks("json"):
        zed = json.loads(body)["language_models"]["openai_compatible"]["llmctl"]
        assert zed["api_url"] == BASE
        assert {m["name"] for m in zed["available_models"]} <= NAMES
    seen = 0
    for body in blocks("yaml"):
        data = yaml.safe_load(body)
        if "models" in data:  # Continue
            for m in data["models"]:
                assert m["apiBase"] == BASE and m["provider"] == "openai" and m["model"] in NAMES
                seen += 1
        else:  # aider
            assert data["openai-api-base"] == BASE
            assert data["model"].removeprefix("openai/") in NAMES
            seen += 1
    assert seen >= 4


def test_toml_snippets_are_valid_llmctl_config():
    for body in blocks("toml"):
        raw = tomllib.loads(body)
        cfg = config.parse({"models": raw["models"]})
        assert cfg.models


def test_python_snippets_run_against_a_running_proxy(tmp_path):
    ups = [start_upstream("fake-coder"), start_upstream("fake-general")]
    e = Env(tmp_path)
    e.url_models({"coder": ("fake-coder", ups[0].url, 'fim = "starcoder"'),
                  "general": ("fake-general", ups[1].url)})
    try:
        assert e.run("up", "--timeout", "30").returncode == 0
        for body in blocks("python"):
            code = body.replace(BASE, e.url + "/v1").replace("sk-local-…", KEY)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
            assert "tok0" in r.stdout  # the stand-in's answers came back
    finally:
        e.run("down")
        for u in ups:
            u.stop()
