"""`llmctl chat` from a pipe, as scripts use it, against the stand-in upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import start_upstream


@pytest.fixture(scope="module")
def up():
    u = start_upstream("fake")
    yield u
    u.stop()


def chat(*args: str, text: str = "hello", home) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_HOME": str(home), "NO_COLOR": "1"}
    env.pop("LLMCTL_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "llmctl", "chat", *args], input=text, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_pipe_gets_only_the_answer_on_stdout(up, tmp_path):
    r = chat("--url", up.url, "--model", "fake", "--max-tokens", "3", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tok0 tok1 tok2 \n" and r.stderr == ""
    body = json.loads(up.stats()["last_body"])
    assert body["max_tokens"] == 3 and body["messages"] == [{"role": "user", "content": "hello"}]


def test_stats_on_request_go_to_stderr(up, tmp_path):
    r = chat("--url", up.url, "--model", "fake", "--max-tokens", "4", "--stats", home=tmp_path)
    assert r.returncode == 0 and r.stdout == "tok0 tok1 tok2 tok3 \n"
    assert "first token" in r.stderr and "4 tokens" in r.stderr


def test_an_unknown_model_is_refused_before_anything_is_asked(up, tmp_path):
    before = up.stats()["requests"]
    r = chat("--url", up.url, "--model", "nosuch", home=tmp_path)
    assert r.returncode == 2 and "no model named 'nosuch'" in r.stderr  # a usage error
    assert "known: fake" in r.stderr and up.stats()["requests"] == before


def test_no_server_is_one_line_with_the_way_out(tmp_path):
    r = chat("--url", "http://127.0.0.1:9", "--model", "x", home=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach http://127.0.0.1:9" in r.stderr and "llmctl up" in r.stderr
