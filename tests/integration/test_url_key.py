"""`url` models with an `api_key`: another llmctl or a hosted endpoint as a backend."""

from __future__ import annotations

import json

import httpx

from .conftest import start_upstream
from .test_cli_stack import KEY, Env

UP_KEY = "sk-upstream-secret-0123456789"


def test_the_upstream_gets_its_own_key_never_the_clients_and_it_is_never_shown(tmp_path):
    up = start_upstream("remote")
    e = Env(tmp_path)
    e.url_models({"remote": ("remote", up.url, f'api_key = "{UP_KEY}"')})
    try:
        assert e.run("up", "--timeout", "30").returncode == 0
        r = httpx.post(e.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "remote", "max_tokens": 2,
                             "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        seen = up.stats()["last_headers"]
        assert seen["authorization"] == f"Bearer {UP_KEY}" and KEY not in json.dumps(seen)
        shown = e.run("config", "show").stdout + e.run("config", "show", "--json").stdout
        assert UP_KEY not in shown and UP_KEY[-4:] in shown
        logs = "".join(p.read_text() for p in (e.home / "logs").glob("*"))
        assert UP_KEY not in logs
    finally:
        e.run("down")
        up.stop()


def test_api_key_on_a_model_llmctl_starts_is_a_clear_error(tmp_path):
    e = Env(tmp_path)
    cfg = e.home / "config.toml"
    cfg.write_text(cfg.read_text().replace("[models.general]", '[models.general]\napi_key = "x"'))
    r = e.run("config", "show")
    assert r.returncode == 1 and "api_key' is the key sent to a `url` server" in r.stderr
