"""Issue 17's rough edges, met the way a user meets them: typed commands, `up`'s
feedback while waiting and when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from llmctl import procs

from .conftest import interruptible
from .test_cli_stack import Env


@pytest.mark.parametrize("typed, meant", [("serve", "up"), ("run", "up"), ("ps", "status")])
def test_words_from_other_tools_get_the_right_suggestion(tmp_path, typed, meant):
    r = Env(tmp_path).run(typed)
    assert r.returncode == 2 and f"did you mean `llmctl {meant}`" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_shows_flags_without_a_value(tmp_path):
    e = Env(tmp_path)
    for cmd in (["up", "--help"], ["keys", "add", "--help"], ["--help"]):
        r = e.run(*cmd)
        assert r.returncode == 0 and "--help" in r.stdout, cmd
        assert "<bool>" not in r.stdout, cmd
    assert "<int>" in e.run("keys", "add", "--help").stdout  # options with values keep theirs


def test_up_says_which_model_is_queued_and_ends_with_one_line(tmp_path):
    e = Env(tmp_path, coder_args='["--startup-delay", "1"]')
    r = e.run("up", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert "general    QUEUED" in r.stderr and "starts when the one before it is ready" in r.stderr
    assert "ready in" in r.stderr
    e.run("down")


def test_ctrl_c_during_up_shows_the_stop_and_confirms(tmp_path):
    e = Env(tmp_path, coder_args='["--startup-delay", "30", "--child"]')
    p = subprocess.Popen([sys.executable, "-m", "llmctl", "up", "--timeout", "120"], env=e.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=interruptible)
    deadline = time.monotonic() + 30
    while not (pgid := ((e.status().get("backends") or {}).get("coder") or {}).get("pgid")):
        assert time.monotonic() < deadline and p.poll() is None  # the coder is starting
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted: stopping the stack" in err and "stopped the daemon" in err
    assert err.rstrip().endswith("stopped: no process of this stack is left, its ports are free")
    assert procs.group_pids(pgid) == [] and all(procs.port_free(x) for x in e.ports)


def test_models_list_what_the_server_says_of_itself(tmp_path):
    import httpx

    from .test_cli_stack import KEY

    e = Env(tmp_path)
    try:
        assert e.run("up", "--timeout", "60").returncode == 0
        data = httpx.get(e.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}
                         ).json()["data"]
        coder = next(m for m in data if m["id"] == "fake-coder")
        # vLLM's root (the weights folder it loaded) and context length, beside llmctl's own.
        assert coder["root"] == str(tmp_path / "model") and coder["max_model_len"] == 4096
        assert coder["owned_by"] == "llmctl" and coder["state"] == "RUNNING"
    finally:
        e.run("down")


def test_status_shows_each_models_weights_tokenizer_and_context(tmp_path):
    e = Env(tmp_path)
    try:
        assert e.run("up", "--timeout", "60").returncode == 0
        b = e.status()["backends"]["coder"]
        assert b["weights"] == b["tokenizer"] == str(tmp_path / "model")
        assert b["max_model_len"] == 4096
        e.env["COLUMNS"] = "250"
        table = e.run("status").stdout
        assert "CONTEXT" in table and "4,096" in table and str(tmp_path / "model") in table
    finally:
        e.run("down")


FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


def test_config_import_converts_the_old_stacks_env(tmp_path):
    import stat as statmod
    import tomllib

    e = Env(tmp_path)
    target = e.home / "config.toml"
    r = e.run("config", "import", str(FIXTURES / "old-stack.env.example"))
    assert r.returncode == 1 and "already exists" in r.stderr  # Env wrote one: kept
    r = e.run("config", "import", str(FIXTURES / "old-stack.env.example"), "--force")
    assert r.returncode == 0, r.stderr
    assert "ROUTER_PORT=8080 → proxy.port" in r.stderr
    assert "ignored LOG_LEVEL (set LLMCTL_LOG_LEVEL" in r.stderr
    assert "ignored COMPOSE_PROJECT_NAME" in r.stderr
    assert "base model with no chat template" in r.stderr  # the seed's Mistral-7B-v0.1
    assert "sk-old-stack-change-me-0123456789" not in r.stderr  # the key is masked
    assert statmod.S_IMODE(target.stat().st_mode) == 0o600
    cfg = tomllib.loads(target.read_text())
    assert cfg["proxy"]["port"] == 8080
    assert cfg["proxy"]["api_keys"] == ["sk-old-stack-change-me-0123456789"]
    coder, general = cfg["models"]["coder"], cfg["models"]["general"]
    assert (coder["source"], coder["name"], coder["memory"], coder["max_num_seqs"]) == (
        "TheBloke/deepseek-coder-33B-instruct-AWQ", "deepseek-coder-33b-instruct", 0.45, 64)
    assert (general["source"], general["name"], general["port"], general["max_model_len"]) == (
        "TheBloke/Mistral-7B-v0.1-AWQ", "mistral-7b-v0.1", 8001, 8192)
    assert e.run("config", "show").returncode == 0  # it reads back
    bad = tmp_path / "bad.env"
    bad.write_text("CODER_MAX_SEQ=lots\n")
    r = e.run("config", "import", str(bad), "--force")
    assert r.returncode == 1 and "bad.env:1: CODER_MAX_SEQ must be an integer" in r.stderr
    assert cfg == tomllib.loads(target.read_text())  # nothing half-written
